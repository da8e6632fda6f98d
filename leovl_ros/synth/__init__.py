"""Procedural synthetic rooms: generation, RGB-D rendering, annotations, writers.

Modules are imported on use: rendering pulls in Open3D, the generator and annotators need
only numpy.

    catalog.py    object categories, sizes, colours
    rooms.py      seeded rooms: layout, scene graph
    floors.py     seeded floors: typed rooms along a corridor, one camera route
    relations.py  above, near, left/right, referring phrases (the annotations' truth)
    shapes.py     meshes of rooms and objects
    render.py     RGB-D along a walking path (Open3D ray casting)
    writers.py    a ScanNet-style folder and a rosbag2 file
    qa.py         QA records
    floor_qa.py   QA records about a whole floor
    language.py   captions, plans, dialogues
    text.py       small text helpers of the annotators
    annotate.py   all five tasks for one room
    cli.py        the leovl-synth command
"""
