r"""COCO bbox (and segm) AP of a checkpoint on a dataset split, with pycocotools.

    python scripts/evaluate.py --model_dir runs/shapes
    python scripts/evaluate.py --config_file configs/mask_rcnn_r50_fpn_1x_coco.yaml \
        --checkpoint_path runs/coco/ckpt-87960 --split val --max_images 500 --output_dir runs/coco/eval

Ground truth is the split's ann_file when it exists, else the split's TFRecords. Writes metrics.json
({"bbox": {"AP": ..., "AP50": ..., "per_class": {...}}, "segm": {...}}) and metrics.txt (the printed table) to
--output_dir (default: the model_dir, else the checkpoint's folder).
"""
import os

from absl import flags

import _cli

_cli.define_checkpoint_flags()
flags.DEFINE_enum("split", "val", ["train", "val", "test"], "Section of config.data to evaluate on.")
flags.DEFINE_integer("max_images", None, "Evaluate only the first N images (a quick look). Default: all.",
                     lower_bound=1)
flags.DEFINE_string("output_dir", None, "Folder for metrics.json and metrics.txt (created if needed). Default: "
                    "--model_dir, else the checkpoint's folder.")
FLAGS = flags.FLAGS


def main(_):
    checkpoint = _cli.checkpoint_args()  # before TensorFlow loads
    from tfrcnn.evaluation import format_table
    from tfrcnn.training import checkpoints, trainer

    model, config, path = checkpoints.load_model(**checkpoint)
    metrics = trainer.evaluate(config, model, split=FLAGS.split, max_images=FLAGS.max_images)
    output_dir = FLAGS.output_dir or FLAGS.model_dir or os.path.dirname(path)
    os.makedirs(output_dir, exist_ok=True)
    trainer.write_metrics(metrics, output_dir)
    print(format_table(metrics))
    print(f"{path}: metrics written to {os.path.join(output_dir, 'metrics.json')}")
    return 0


if __name__ == "__main__":
    _cli.run(main)
