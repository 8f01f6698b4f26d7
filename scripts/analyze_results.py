r"""Where a detector goes wrong: error analysis of a COCO results JSON against its ground truth.

    python scripts/analyze_results.py --results runs/shapes/predictions/detections.json \
        --ann_file data/shapes/annotations/instances_val.json --image_dir data/shapes/val \
        --output_dir runs/shapes/analysis

--results is a list of COCO result records {image_id, category_id, bbox [x, y, width, height], score, optional
segmentation RLE}, as predict.py writes them (detections.json); --ann_file is the COCO instances file of the same
images, whose file_names are read in --image_dir. Writes, in --output_dir:
- pr_curves.png / .csv / .json: per-class precision-recall curves at IoU 0.5 and 0.75 (COCO's matching and 101
  recall points; each area is the class's AP);
- confusion_matrix.png / .csv: ground truth class against predicted class and background, at --score_thr and
  --tp_iou_thr (MMDetection's tools/analysis_tools/confusion_matrix.py rule);
- errors.png / .csv / .json: the TIDE error breakdown (Bolya et al., ECCV 2020): Cls, Loc, Both, Dupe, Bkg and
  Missed counts, and the AP50 that fixing each type alone would gain;
- worst/<stem>.png: ground truth beside the predictions on the --num_worst images with the most false positives
  + missed objects (needs --image_dir);
- summary.txt: the headline numbers and the files (also printed).

Host-side: numpy, pycocotools, PIL and matplotlib; no TensorFlow.
"""
import os  # noqa: I001  (_cli is the scripts' own module: local, after absl, as in every script)

from absl import flags

import _cli

flags.DEFINE_string("results", None, "Required. A COCO results JSON: a list of {image_id, category_id, bbox, score} "
                    "records (predict.py's detections.json).")
flags.DEFINE_string("ann_file", None, "Required. The COCO instances JSON of the ground truth.")
flags.DEFINE_string("output_dir", None, "Required. Folder for the charts, tables and drawings (created if needed).")
flags.DEFINE_string("image_dir", None, "Folder of the ground truth's images (its file_names), to draw the worst "
                    "images. Default: none, the worst images are only listed.")
flags.DEFINE_float("score_thr", 0.3, "Detections below it are left out of the confusion matrix and the worst-image "
                   "counts (the PR curves and the error breakdown take every detection, as AP does).",
                   lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_float("tp_iou_thr", 0.5, "IoU at which a detection hits a ground truth object in the confusion matrix "
                   "and the worst-image counts.", lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_integer("num_worst", 8, "How many of the images with the most errors to draw.", lower_bound=0)
flags.DEFINE_enum("iou_type", "bbox", ["bbox", "segm"], "Match boxes, or masks (every record needs a "
                  "segmentation).")
flags.mark_flags_as_required(["results", "ann_file", "output_dir"])
FLAGS = flags.FLAGS


def main(_):
    _cli.check_file(FLAGS.results, "results file")
    _cli.check_file(FLAGS.ann_file, "annotation file")
    if FLAGS.image_dir and not os.path.isdir(FLAGS.image_dir):
        raise FileNotFoundError(f"{FLAGS.image_dir}: no such folder")
    from tfrcnn.evaluation.analysis import analyze, images_in_folder, load_ground_truth, load_results

    coco_gt = load_ground_truth(FLAGS.ann_file)
    results = load_results(FLAGS.results, coco_gt, FLAGS.iou_type)
    read_images = images_in_folder(coco_gt, FLAGS.image_dir) if FLAGS.image_dir else None
    report = analyze(results, coco_gt, FLAGS.output_dir, read_images, score_thr=FLAGS.score_thr,
                     tp_iou_thr=FLAGS.tp_iou_thr, num_worst=FLAGS.num_worst, iou_type=FLAGS.iou_type)
    print(report["summary"])
    return 0


if __name__ == "__main__":
    _cli.run(main)
