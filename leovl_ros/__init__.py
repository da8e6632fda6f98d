"""leovl_ros: the LEO-VL 3D vision-language model for ROS 2 robots.

Everything outside ``leovl_ros.ros`` is ROS-free (numpy/torch) and usable from a plain
``pip install``. On a colcon install the generated ``leovl_ros.msg`` / ``leovl_ros.srv``
packages live next to these modules; ``extend_path`` lets a source checkout that comes
first on ``sys.path`` still find them in the install tree.
"""
from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)
__version__ = "0.1.0"
