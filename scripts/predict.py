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
_cli.define_checkpoint_flags()
flags.DEFINE_string("output_dir", None, "Required. Folder for the PNGs and detections.json (created if needed).")
flags.DEFINE_float("score_threshold", 0.5, "Detections scoring below it are not drawn; detections.json keeps them.",
                   lower_bound=0.0, upper_bound=1.0)
flags.mark_flags_as_required(["image", "output_dir"])
FLAGS = flags.FLAGS

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


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
    arrays for a batch of one, with `detection_masks_image` when the model has masks (pasted here, as the config
    beside the SavedModel says, when it was exported without them)."""
    import numpy as np
    import tensorflow as tf

    from tfrcnn.config import CONFIG_NAME, RCNNTestCfg, load_config
    from tfrcnn.export import LABEL_MAP_JSON
    from tfrcnn.inference import Postprocessor

    check_saved_model(saved_model_dir)
    loaded = tf.saved_model.load(saved_model_dir)
    key = next((k for k in ("image_tensor", "serving_default", "image_bytes") if k in loaded.signatures), None)
    if key is None:
        raise ValueError(f"{saved_model_dir}: no image_tensor, serving_default or image_bytes signature "
                         f"(it has {sorted(loaded.signatures)})")
    function = loaded.signatures[key]
    (input_name, spec), = function.structured_input_signature[1].items()
    names = {}
    label_map_file = os.path.join(saved_model_dir, LABEL_MAP_JSON)
    if os.path.isfile(label_map_file):
        with open(label_map_file) as f:
            names = {int(i): n for i, n in json.load(f).items()}
    config_file = os.path.join(saved_model_dir, CONFIG_NAME)
    rcnn = load_config(config_file).test_cfg.rcnn if os.path.isfile(config_file) else RCNNTestCfg()
    postprocess = Postprocessor(list(names), list(names.values()), rcnn.mask_paste, rcnn.mask_thr_binary)

    def detect(image):
        if spec.dtype == tf.uint8:
            inputs = tf.constant(image[None])
        else:  # image_bytes: a lossless PNG of the very pixels that get drawn
            inputs = tf.constant([tf.io.encode_png(image).numpy()])
        out = function(**{input_name: inputs})
        if "detection_masks" in out and "detection_masks_image" not in out:
            out["detection_masks_image"] = postprocess.paste(out["detection_masks"], out["detection_boxes"],
                                                             image.shape[:2])
        return {k: np.asarray(v) for k, v in out.items()}

    return detect, names


def checkpoint_detector(checkpoint):
    """(detect, {category id: name}) for a training run's checkpoint (`load_model`'s arguments), run in process."""
    from tfrcnn.export import DetectionModule
    from tfrcnn.training.checkpoints import load_model

    model, config, path = load_model(**checkpoint)
    print(f"restored {path}")
    module = DetectionModule(model, config, paste_masks=config.model.with_mask)

    def detect(image):
        return {k: v.numpy() for k, v in module.detect(image[None]).items()}

    return detect, module.label_map


def main(_):
    # Flags, image paths and the detector's files are checked before TensorFlow loads: a mistake is reported at once.
    checkpoint_flags = [n for n in ("model_dir", "config_file", "checkpoint_path", "params_override", "precision")
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
        detect, names = checkpoint_detector(_cli.checkpoint_args())
    from tfrcnn.inference import predict_images
    predict_images(detect, paths, FLAGS.output_dir, names, FLAGS.score_threshold)
    return 0


if __name__ == "__main__":
    _cli.run(main)
