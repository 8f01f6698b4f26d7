"""Data: COCO files, Model Garden TFRecords, the tf.data input pipeline, and the synthetic shapes dataset."""
from tfrcnn.data.coco import CocoFormatError, load_coco
from tfrcnn.data.pipeline import CorruptImages, build_dataset, resolve_categories
from tfrcnn.data.shapes import CATEGORIES as SHAPES_CATEGORIES
from tfrcnn.data.shapes import ShapesDataset, ensure_shapes_dataset, generate_shapes_dataset
from tfrcnn.data.tfrecord import coco_from_tfrecords, create_coco_tfrecord

__all__ = ["CocoFormatError", "CorruptImages", "SHAPES_CATEGORIES", "ShapesDataset", "build_dataset",
           "coco_from_tfrecords", "create_coco_tfrecord", "ensure_shapes_dataset", "generate_shapes_dataset",
           "load_coco", "resolve_categories"]
