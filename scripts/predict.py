r"""Runs a detector on images and writes pictures of its detections and a COCO results JSON.

    python scripts/predict.py --saved_model_dir runs/shapes/saved_model --image data/shapes/val \
        --output_dir runs/shapes/predictions
    python scripts/predict.py --model_dir runs/shapes --image 'photos/*.jpg' --image extra.png --output_dir out

The detector is either a SavedModel from scripts/export_saved_model.py (its `image_tensor` signature, else
`serving_default`; class names from the label_map.json beside it) or a training run's checkpoint, run in process
(`--model_dir`, or `--config_file` + `--checkpoint_path`). Images are processed one at a time, at their own size.

Writes, in --output_dir: `<stem>.png` per image (masks, boxes and "name score" labels of the detections scoring at
least --score_threshold) and `detections.json`, a COCO results list holding EVERY detection the model returns
(those above the model's own test_cfg.rcnn.score_thr), whatever --score_threshold: one entry per detection with
image_id (the stem as an integer when it is one, else the image's position in the input order), file_name,
category_id, bbox [x, y, width, height] in original pixels, score, and for Mask R-CNN a compressed-RLE
segmentation. (To evaluate its masks with pycocotools, drop the "bbox" keys first, as detectron2 does: loadRes
would otherwise take each box's area for the mask's.)
"""
import glob
import json
import os

from absl import flags

import _cli

flags.DEFINE_multi_string("image", None, "Required. An image file, a folder (its .jpg/.jpeg/.png/.bmp/.gif files) "
                          "or a quoted glob such as 'val/*.jpg'")
flags.DEFINE_string("saved_model_dir", None, "A SavedModel written by scripts/export_saved_model.py (with its "
                    "label_map.json). Required unless a checkpoint is the detector: --model_dir, or --config_file "
                    "with --checkpoint_path (not together with this flag).")
flags.DEFINE_string("model_dir", None, "A training run's directory: its config.yaml and newest checkpoint are "
                    "the defaults of --config_file and --checkpoint_path. Required unless --saved_model_dir, or "
                    "--config_file with --checkpoint_path, is given.")
flags.DEFINE_multi_string("config_file", None, "A YAML config (default: <model_dir>/config.yaml); several merge in "
                          "order, later files winning")
flags.DEFINE_string("checkpoint_path", None, "A checkpoint prefix such as <model_dir>/ckpt-12 (the files "
                    "ckpt-12.index and ckpt-12.data-*). Default: the newest checkpoint in --model_dir.")
flags.DEFINE_string("params_override", None, "Config overrides for a checkpoint, as a.b=c,d.e=f, e.g. "
                    "test_cfg.rcnn.score_thr=0.3. Default: none.")
flags.DEFINE_string("output_dir", None, "Required. Folder for the PNGs and detections.json (created if needed).")
flags.DEFINE_float("score_threshold", 0.5, "Detections scoring below it are not drawn; detections.json keeps them.",
                   lower_bound=0.0, upper_bound=1.0)
flags.mark_flags_as_required(["image", "output_dir"])
FLAGS = flags.FLAGS

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
RESULTS_NAME = "detections.json"


def expand_images(patterns):
    """Files, folders and globs → the image paths, in the order given (folders and globs sorted), each once.
    Raises FileNotFoundError for a path that does not exist, an empty folder or a glob matching nothing, and
    ValueError when two images share a stem (their PNGs would overwrite each other)."""
    paths = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            found = sorted(os.path.join(pattern, f) for f in os.listdir(pattern)
                           if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(pattern, f)))
            if not found:
                raise FileNotFoundError(f"{pattern}: no {'/'.join(IMAGE_EXTENSIONS)} files in this folder")
        elif glob.has_magic(pattern):
            found = sorted(p for p in glob.glob(pattern) if os.path.isfile(p))
            if not found:
                raise FileNotFoundError(f"{pattern}: the pattern matches no file")
        elif os.path.isfile(pattern):
            found = [pattern]
        else:
            raise FileNotFoundError(f"{pattern}: no such file or folder")
        paths += [p for p in found if p not in paths]
    stems = {}
    for p in paths:
        stem = os.path.splitext(os.path.basename(p))[0]
        if stem in stems:
            raise ValueError(f"{stems[stem]} and {p} share the name {stem!r}; their pictures would overwrite "
                             "each other (predict them in separate runs)")
        stems[stem] = p
    return paths


def check_saved_model(saved_model_dir):
    """Raises FileNotFoundError unless the folder holds a SavedModel (local paths; others are left to TF)."""
    if "://" not in saved_model_dir and not os.path.isfile(os.path.join(saved_model_dir, "saved_model.pb")):
        raise FileNotFoundError(f"{saved_model_dir}: no saved_model.pb (is it an export_saved_model.py --export_dir?)")


def saved_model_detector(saved_model_dir):
    """(detect, {category id: name}) for a SavedModel; detect(uint8 [H, W, 3]) → the outputs dict of numpy
    arrays for a batch of one, with `detection_masks_image` when the model has masks."""
    import numpy as np
    import tensorflow as tf
    import yaml

    check_saved_model(saved_model_dir)
    loaded = tf.saved_model.load(saved_model_dir)
    key = next((k for k in ("image_tensor", "serving_default", "image_bytes") if k in loaded.signatures), None)
    if key is None:
        raise ValueError(f"{saved_model_dir}: no image_tensor, serving_default or image_bytes signature "
                         f"(it has {sorted(loaded.signatures)})")
    function = loaded.signatures[key]
    (input_name, spec), = function.structured_input_signature[1].items()
    names = {}
    label_map_file = os.path.join(saved_model_dir, "label_map.json")
    if os.path.isfile(label_map_file):
        with open(label_map_file) as f:
            names = {int(i): n for i, n in json.load(f).items()}
    mask_threshold, paste_mode = 0.5, "mmdet"
    config_file = os.path.join(saved_model_dir, "config.yaml")
    if os.path.isfile(config_file):
        with open(config_file) as f:
            rcnn = (yaml.safe_load(f) or {}).get("test_cfg", {}).get("rcnn", {})
        mask_threshold = float(rcnn.get("mask_thr_binary", 0.5))
        paste_mode = rcnn.get("mask_paste", "mmdet")

    def detect(image):
        if spec.dtype == tf.uint8:
            inputs = tf.constant(image[None])
        else:  # image_bytes: a lossless PNG of the very pixels that get drawn
            inputs = tf.constant([tf.io.encode_png(image).numpy()])
        out = {k: v.numpy() for k, v in function(**{input_name: inputs}).items()}
        if "detection_masks" in out and "detection_masks_image" not in out:
            from tfrcnn.ops.masks import paste_masks
            out["detection_masks_image"] = paste_masks(out["detection_masks"], out["detection_boxes"],
                                                       image.shape[:2], mode=paste_mode, threshold=mask_threshold).numpy()
        return {k: np.asarray(v) for k, v in out.items()}

    return detect, names


def checkpoint_detector(model_dir, config_file, checkpoint_path, overrides):
    """(detect, {category id: name}) for a training run's checkpoint, run in process."""
    from tfrcnn.export import DetectionModule
    from tfrcnn.training.checkpoints import load_model

    model, config, path = load_model(model_dir=model_dir, config_file=config_file, checkpoint_path=checkpoint_path,
                                     overrides=overrides)
    print(f"restored {path}")
    module = DetectionModule(model, config, paste_masks=config.model.with_mask)

    def detect(image):
        return {k: v.numpy() for k, v in module.detect(image[None]).items()}

    return detect, module.label_map


def coco_results(image_id, file_name, out):
    """One image's outputs (a batch of one, numpy) → COCO results dicts, boxes as [x, y, width, height]."""
    from pycocotools import mask as mask_utils
    import numpy as np

    n = int(out["num_detections"][0])
    boxes, scores = out["detection_boxes"][0, :n], out["detection_scores"][0, :n]
    classes = out["detection_classes"][0, :n]
    masks = out.get("detection_masks_image")
    rles = None
    if masks is not None and n:
        rles = mask_utils.encode(np.asfortranarray(masks[0, :n].transpose(1, 2, 0).astype(np.uint8)))
    results = []
    for k in range(n):
        if classes[k] <= 0:
            continue  # padding
        y1, x1, y2, x2 = (float(v) for v in boxes[k])
        entry = {"image_id": image_id, "file_name": file_name, "category_id": int(classes[k]),
                 "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(scores[k])}
        if rles is not None:
            entry["segmentation"] = {"size": rles[k]["size"], "counts": rles[k]["counts"].decode("ascii")}
        results.append(entry)
    return results


def predict(paths, detect, names, output_dir, score_threshold):
    """Runs `detect` on each image, writes <stem>.png per image and detections.json; returns the results list."""
    import numpy as np
    from PIL import Image

    from tfrcnn.visualize import draw_detections

    os.makedirs(output_dir, exist_ok=True)
    results = []
    for index, path in enumerate(paths):
        with Image.open(path) as picture:
            image = np.asarray(picture.convert("RGB"))
        stem = os.path.splitext(os.path.basename(path))[0]
        image_id = int(stem) if stem.isdigit() else index
        out = detect(image)
        found = coco_results(image_id, os.path.basename(path), out)
        results += found
        n = int(out["num_detections"][0])
        masks = out.get("detection_masks_image")
        drawing = draw_detections(image, out["detection_boxes"][0, :n], out["detection_classes"][0, :n],
                                  out["detection_scores"][0, :n], names,
                                  masks=None if masks is None else masks[0, :n, :image.shape[0], :image.shape[1]],
                                  score_threshold=score_threshold)
        png = os.path.join(output_dir, stem + ".png")
        Image.fromarray(drawing).save(png)
        shown = [r for r in found if r["score"] >= score_threshold]
        listing = ", ".join(f"{names.get(r['category_id'], r['category_id'])} {r['score']:.2f}" for r in shown[:5])
        print(f"{path}: {len(found)} detections, {len(shown)} drawn (score >= {score_threshold:g})"
              f"{': ' + listing if listing else ''}{' ...' if len(shown) > 5 else ''} -> {png}")
    json_path = os.path.join(output_dir, RESULTS_NAME)
    with open(json_path, "w") as f:
        json.dump(results, f)
    print(f"wrote {len(results)} detections on {len(paths)} images to {json_path}")
    return results


def main(_):
    # Flags, image paths and the detector's files are checked before TensorFlow loads: a mistake is reported at once.
    checkpoint_flags = [n for n in ("model_dir", "config_file", "checkpoint_path", "params_override")
                        if FLAGS[n].value is not None]
    if FLAGS.saved_model_dir and checkpoint_flags:
        raise _cli.UsageError(f"--saved_model_dir excludes --{', --'.join(checkpoint_flags)}: give one detector")
    if not FLAGS.saved_model_dir and not (FLAGS.model_dir or FLAGS.config_file):
        raise _cli.UsageError("give a detector: --saved_model_dir, or --model_dir (or --config_file with "
                              "--checkpoint_path)")
    paths = expand_images(FLAGS.image)
    if FLAGS.saved_model_dir:
        check_saved_model(FLAGS.saved_model_dir)
        detect, names = saved_model_detector(FLAGS.saved_model_dir)
    else:
        _cli.check_run(FLAGS.model_dir, FLAGS.config_file, FLAGS.checkpoint_path)
        detect, names = checkpoint_detector(FLAGS.model_dir, FLAGS.config_file, FLAGS.checkpoint_path,
                                            FLAGS.params_override)
    predict(paths, detect, names, FLAGS.output_dir, FLAGS.score_threshold)
    return 0


if __name__ == "__main__":
    _cli.run(main)
