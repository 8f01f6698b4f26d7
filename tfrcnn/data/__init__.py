"""Data: COCO files, Model Garden TFRecords, the tf.data input pipeline, and the synthetic shapes dataset.

Names load on first use (PEP 562): `tfrcnn.data.coco` (and so the config schema, which takes the COCO class
table from it) imports without TensorFlow.
"""
import importlib

_HOMES = {"CocoFormatError": "coco", "load_coco": "coco", "resolve_categories": "coco",
          "CorruptImages": "pipeline", "build_dataset": "pipeline",
          "SHAPES_CATEGORIES": "shapes", "ShapesDataset": "shapes", "ensure_shapes_dataset": "shapes",
          "generate_shapes_dataset": "shapes", "coco_from_tfrecords": "tfrecord", "create_coco_tfrecord": "tfrecord"}
__all__ = sorted(_HOMES)


def __getattr__(name):
    if name not in _HOMES:
        raise AttributeError(f"module 'tfrcnn.data' has no attribute {name!r}")
    module = importlib.import_module(f"tfrcnn.data.{_HOMES[name]}")
    return getattr(module, "CATEGORIES" if name == "SHAPES_CATEGORIES" else name)
