"""tfrcnn: Faster R-CNN and Mask R-CNN with FPN for TensorFlow 2 / Keras 3, designed as MMDetection designs them.

`build_model` and `load_config` load on first use (PEP 562), so that `tfrcnn.config` imports without TensorFlow.
"""
import importlib

__version__ = "0.1.0"
__all__ = ["build_model", "load_config"]
_HOMES = {"build_model": "tfrcnn.modeling", "load_config": "tfrcnn.config"}


def __getattr__(name):
    if name not in _HOMES:
        raise AttributeError(f"module 'tfrcnn' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
