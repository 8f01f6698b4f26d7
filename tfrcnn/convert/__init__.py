"""Converters from other frameworks' checkpoints.

`load_pth` reads a PyTorch ``.pth`` state dict into NumPy arrays without importing torch, so published
torchvision / MMDetection weights can be ported on a machine that has only TensorFlow.
"""
from tfrcnn.convert.pth import PthError, load_pth

__all__ = ["PthError", "load_pth"]
