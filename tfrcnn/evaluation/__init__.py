"""COCO evaluation of detections with pycocotools (bbox and segm AP)."""
from tfrcnn.evaluation.coco_evaluator import CocoEvaluator, evaluate_model, format_table

__all__ = ["CocoEvaluator", "evaluate_model", "format_table"]
