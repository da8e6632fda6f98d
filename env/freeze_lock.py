"""Print `name==version` for every wheel-installed distribution of a venv (used by `make lock`).

`pip freeze` also lists the egg-info folders that the ROS 2 wheels carry for their inner
Python packages (action_msgs, rclpy, ...): those are not installable distributions, so
only `.dist-info` entries are kept, and local version labels (torch's +cpu) are dropped.
"""
import importlib.metadata as md

rows = set()
for dist in md.distributions():
    if str(dist._path).endswith(".dist-info") and dist.metadata["Name"] not in ("pip",):
        rows.add(f"{dist.metadata['Name']}=={dist.version.split('+')[0]}")
print("\n".join(sorted(rows, key=str.lower)))
