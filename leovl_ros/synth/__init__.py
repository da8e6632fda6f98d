"""Procedural synthetic rooms: generation, RGB-D rendering, annotations, writers.

catalog (categories, sizes, colours) -> rooms (seeded layout, scene graph) + relations
(above, near, left/right, referring phrases) -> shapes (meshes) -> render (Open3D ray casting
along a walking path) -> writers (ScanNet-style folder, rosbag2); qa + language + annotate
(records of all five tasks); cli (`leovl-synth`). Modules are imported on use: rendering
pulls in Open3D, the generator and annotators need only numpy.
"""
