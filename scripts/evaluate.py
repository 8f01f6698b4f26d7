r"""COCO bbox (and segm) AP of a checkpoint on a dataset split, with pycocotools; with --analyze, the error analysis.

    python scripts/evaluate.py --model_dir runs/shapes
    python scripts/evaluate.py --model_dir runs/shapes --analyze
    python scripts/evaluate.py --config_file configs/mask_rcnn_r50_fpn_1x_coco.yaml \
        --checkpoint_path runs/coco/ckpt-87960 --split val --max_images 500 --output_dir runs/coco/eval

Ground truth is the split's ann_file when it exists, else the split's TFRecords. Writes metrics.json
({"bbox": {"AP": ..., "AP50": ..., "per_class": {...}}, "segm": {...}}) and metrics.txt (the printed table) to
--output_dir (default: the model_dir, else the checkpoint's folder). With --analyze also detections.json (the COCO
results, as predict.py writes them) and analysis/<bbox|segm>/: what scripts/analyze_results.py writes (per-class PR
curves, the confusion matrix, the TIDE error breakdown, the images with the most errors beside their ground truth).
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
flags.DEFINE_boolean("analyze", False, "Also write detections.json and the error analysis of each evaluated iou type "
                     "to <output_dir>/analysis/<iou type>/ (scripts/analyze_results.py's defaults: score >= 0.3, IoU "
                     ">= 0.5, the 8 images with the most errors).")
FLAGS = flags.FLAGS


def main(_):
    checkpoint = _cli.checkpoint_args()  # before TensorFlow loads
    from tfrcnn.evaluation import format_table
    from tfrcnn.training import checkpoints, trainer

    model, config, path = checkpoints.load_model(**checkpoint)
    evaluator = trainer.coco_evaluator(config, FLAGS.split)
    metrics = trainer.evaluate(config, model, split=FLAGS.split, max_images=FLAGS.max_images, evaluator=evaluator)
    output_dir = FLAGS.output_dir or FLAGS.model_dir or os.path.dirname(path)
    os.makedirs(output_dir, exist_ok=True)
    trainer.write_metrics(metrics, output_dir)
    print(format_table(metrics))
    print(f"{path}: metrics written to {os.path.join(output_dir, 'metrics.json')}")
    if FLAGS.analyze:
        _analyze(config, evaluator, output_dir)
    return 0


def _analyze(config, evaluator, output_dir):
    import json

    from tfrcnn.data import pipeline
    from tfrcnn.evaluation.analysis import analyze, images_in_folder
    from tfrcnn.inference import RESULTS_NAME

    results_path = os.path.join(output_dir, RESULTS_NAME)
    with open(results_path, "w") as f:
        json.dump(evaluator.results(), f)
    split_cfg = getattr(config.data, FLAGS.split)
    if split_cfg.ann_file and os.path.isfile(split_cfg.ann_file) and split_cfg.img_prefix:
        read_images = images_in_folder(evaluator.coco_gt, split_cfg.img_prefix)
    else:  # the ground truth came from the TFRecords: so do the images
        def read_images(image_ids):
            return pipeline.read_images(config, FLAGS.split, image_ids)
    for iou_type in evaluator.iou_types:
        report = analyze(evaluator.results(iou_type), evaluator.coco_gt, os.path.join(output_dir, "analysis", iou_type),
                         read_images, iou_type=iou_type, image_ids=evaluator.image_ids,
                         category_ids=evaluator.category_ids)
        print(f"\nerror analysis ({iou_type}):\n{report['summary']}")
    print(f"{results_path}: {len(evaluator.results())} detections")


if __name__ == "__main__":
    _cli.run(main)
