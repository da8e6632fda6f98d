"""ROS 2 side: the ``leovl_assistant`` node (assistant_node), the synthetic camera
``leovl_scene_player`` (scene_player), and their edges: message <-> numpy conversions,
pose sources, approximate-time pairing (sync), parameters and model selection.

The only package that imports rclpy (sync, params and model_source do not).
"""
