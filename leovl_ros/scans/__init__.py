"""Scans: posed RGB-D frames from every source the node and training read (ROS-free).

    frames.py       ScanNet exports and synthetic rooms as posed frames (leovl_ros.rgbd_frame.RGBDFrame)
    scan_readers.py 3RScan, MultiScan, ARKitScenes readers (native layouts)
    multiscan_streams.py MultiScan's depth (.depth.zlib) and colour (.mp4) streams, frame by frame
    scan_align.py   up axis and floor-centred alignment estimated from the data
    scan_sources.py every scan kind by name: locate, read, report
    bag_files.py    the storage files of a recording (segments, files of a killed recorder)
    bag_reader.py   rosbag2 recordings (rosbags): our typestore, TF, camera infos, interactions, posed frames
    tf_buffer.py    offline TF lookups for recordings
    images.py       sensor_msgs/Image -> numpy (the node's decoder too)
    pairing.py      approximate-time RGB/depth pairing (the node's pairer too)
    stamps.py       header stamps -> seconds (the node's conversion too)

Both ``leovl_ros.ros`` (the scene player) and ``leovl_ros.training`` (build-scenes) read
frames through this package, so the node maps exactly what training fuses.
"""
