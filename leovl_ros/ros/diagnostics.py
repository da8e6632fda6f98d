"""``/diagnostics`` for the assistant: :class:`HealthMonitor` checks as a DiagnosticArray."""
from __future__ import annotations

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from std_msgs.msg import Header

from ..assistant.health import HealthMonitor
from ..assistant.records import SceneStats
from ..scans.stamps import stamp_to_seconds

__all__ = ["DiagnosticsPublisher"]


class DiagnosticsPublisher:
    """Publishes one status per check, named ``<node name>: <check>`` (the diagnostic_updater
    convention), with the node's fully qualified name as hardware_id."""

    def __init__(self, node: Node, monitor: HealthMonitor) -> None:
        self._node, self._monitor = node, monitor
        # Absolute: /diagnostics is one topic per robot, whatever the node's namespace.
        self._pub = node.create_publisher(DiagnosticArray, "/diagnostics", 10)

    def publish(self, stats: SceneStats, images_unpaired: int, header: Header) -> None:
        now_s = stamp_to_seconds(header.stamp)
        checks = self._monitor.update(stats, images_unpaired, now_s)
        name, hardware = self._node.get_name(), self._node.get_fully_qualified_name()
        self._pub.publish(DiagnosticArray(header=header, status=[
            DiagnosticStatus(level=bytes([c.level]), name=f"{name}: {c.name}", message=c.message,
                             hardware_id=hardware, values=[KeyValue(key=k, value=v) for k, v in c.values.items()])
            for c in checks]))
