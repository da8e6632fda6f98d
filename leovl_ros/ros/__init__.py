"""ROS 2 side: the ``leovl_assistant`` node (assistant_node), the synthetic camera
``leovl_scene_player`` (scene_player), and their edges: message <-> numpy conversions,
pose sources, camera_info per image and the pose buffer (sync), parameters and model
selection. Image decoding and RGB/depth pairing are the scans wing's (shared with bags).

The only package that imports rclpy (sync, params and model_source do not).
"""
