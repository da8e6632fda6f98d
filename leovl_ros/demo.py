"""`make demo`: the assistant node on the bundled model, fed a synthetic room.

The bundled model (`leovl-tiny`) is not trained yet, so for now this prints what the demo
will do once it is, and exits 0.
"""
from __future__ import annotations

STEPS = (
    "start the leovl_assistant node with the bundled leovl-tiny model",
    "stream a held-out synthetic room as live rgb/depth/camera_info/pose topics",
    "ask three questions, one object caption at an anchor and one plan",
    "print each answer with latency, scene tokens, grounding score and the ground truth",
)


def main() -> int:
    print("leovl_ros demo — the bundled model is not available yet; the demo will:")
    for i, step in enumerate(STEPS, 1):
        print(f"  {i}. {step}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
