"""Converters from other frameworks' checkpoints.

`load_pth` reads a PyTorch ``.pth`` state dict into NumPy arrays without importing torch, so published
torchvision / MMDetection weights can be ported on a machine that has only TensorFlow.
`tfrcnn.convert.torchvision` maps torchvision's ResNet weights onto tfrcnn's backbone (`load_resnet`) and saves
them as a checkpoint for `scripts/train.py --init_checkpoint` (`save_backbone_checkpoint`).
"""
from tfrcnn.convert.pth import PthError, load_pth

__all__ = ["PthError", "load_pth"]
