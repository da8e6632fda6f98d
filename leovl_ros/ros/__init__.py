"""ROS 2 side: the nodes and their edges. The only package that imports rclpy (sync, params
and model_source do not). Image decoding and RGB/depth pairing are the scans wing's
(shared with bags).

    assistant_node.py    leovl_assistant: live mapping + ask_scene / plan_task and friends
    assistant_actions.py AskScene and PlanTask as actions (queue position, partial answers, cancel)
    params.py            every parameter of leovl_assistant, declared once
    model_source.py      the node's model / adapter parameters resolved before heavy imports
    conversions.py       message <-> numpy: camera info, poses, stamps, point clouds, images out
    sync.py              camera_info per image and the pose buffer
    pose_sources.py      camera poses from TF or a pose topic
    diagnostics.py       /diagnostics from the assistant's health checks
    shutdown.py          SIGTERM / SIGINT without losing an answer
    dds.py               the Fast DDS profile for camera-size images
    scene_player.py      leovl_scene_player: a synthetic room, a scan or a bag as a live camera
    replay_sources.py    what the scene player plays
    recorder.py          leovl_recorder: crash-safe mcap recording of what fine-tuning needs
    demo.py              make demo
    demo_pacing.py       make demo's pacing: send rate, scan stride, waiting for the last frame
"""
