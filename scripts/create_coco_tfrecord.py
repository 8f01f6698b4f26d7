r"""Converts a COCO-format dataset (a JSON + an image folder) into sharded TFRecords with Model Garden's keys.

    python scripts/create_coco_tfrecord.py --image_dir data/coco/val2017 \
        --object_annotations_file data/coco/annotations/instances_val2017.json \
        --output_file_prefix data/coco/tfrecord/val --num_shards 8 --include_masks --num_processes 2

Flag names are Model Garden's (official/vision/data/create_coco_tf_record.py), and so are the shard names
(`{prefix}-00000-of-00008.tfrecord`) and the feature keys: either project reads the other's files. It ends with
a summary naming everything it skipped (missing or unreadable images, zero-area boxes, bad segmentations).
"""
import os

from absl import flags

import _cli

flags.DEFINE_string("image_dir", None, "Required. Folder of the images; each file_name in the JSON is relative "
                    "to it.")
flags.DEFINE_string("object_annotations_file", None, "Required. COCO instances JSON (images, annotations, "
                    "categories), e.g. annotations/instances_val2017.json.")
flags.DEFINE_string("output_file_prefix", None, "Required. Path prefix of the shards, written as "
                    "<prefix>-00000-of-<num_shards>.tfrecord; its folder is created if needed.")
flags.DEFINE_integer("num_shards", 32, "Number of output shards; image i goes to shard i % num_shards.", lower_bound=1)
flags.DEFINE_boolean("include_masks", False, "Store one PNG instance mask per object (needed for Mask R-CNN).")
flags.DEFINE_integer("num_processes", 1, "Worker processes that read images and rasterize masks.", lower_bound=1)
flags.mark_flags_as_required(["image_dir", "object_annotations_file", "output_file_prefix"])
FLAGS = flags.FLAGS


def main(_):
    _cli.check_file(FLAGS.object_annotations_file)  # before TensorFlow loads
    if not os.path.isdir(FLAGS.image_dir):
        raise FileNotFoundError(f"image_dir {FLAGS.image_dir}: no such folder")
    from tfrcnn.data.tfrecord import create_coco_tfrecord

    report = create_coco_tfrecord(FLAGS.image_dir, FLAGS.object_annotations_file, FLAGS.output_file_prefix,
                                  num_shards=FLAGS.num_shards, include_masks=FLAGS.include_masks,
                                  num_processes=FLAGS.num_processes)
    print(report.summary())
    return 0


if __name__ == "__main__":
    _cli.run(main)
