"""ROS 2 side: message <-> numpy conversions, pose sources and the assistant node.

The only package that imports rclpy.
"""
