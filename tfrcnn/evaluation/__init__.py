"""COCO evaluation of detections with pycocotools (bbox and segm AP), and the error analysis of results.

Names load on first use (PEP 562): `tfrcnn.evaluation.analysis` (numpy and pycocotools) imports without TensorFlow,
which the evaluator needs.
"""
import importlib

_HOMES = {"CocoEvaluator": "coco_evaluator", "evaluate_model": "coco_evaluator", "format_table": "coco_evaluator",
          "analyze": "analysis"}
__all__ = ["CocoEvaluator", "analyze", "evaluate_model", "format_table"]


def __getattr__(name):
    if name not in _HOMES:
        raise AttributeError(f"module 'tfrcnn.evaluation' has no attribute {name!r}")
    return getattr(importlib.import_module(f"tfrcnn.evaluation.{_HOMES[name]}"), name)
