"""tfrcnn: Faster R-CNN and Mask R-CNN with FPN for TensorFlow 2 / Keras 3, designed as MMDetection designs them."""
from tfrcnn.config import load_config
from tfrcnn.modeling import build_model

__version__ = "0.1.0"
__all__ = ["build_model", "load_config"]
