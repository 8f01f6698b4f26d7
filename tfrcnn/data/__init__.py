"""Data: COCO files, Model Garden TFRecords, the tf.data input pipeline, and the synthetic shapes dataset."""
from tfrcnn.data.coco import CocoFormatError, load_coco
from tfrcnn.data.pipeline import CorruptImages, build_dataset, resolve_categories
from tfrcnn.data.tfrecord import coco_from_tfrecords, create_coco_tfrecord

__all__ = ["CocoFormatError", "CorruptImages", "build_dataset", "coco_from_tfrecords", "create_coco_tfrecord",
           "load_coco", "resolve_categories"]
