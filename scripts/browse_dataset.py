r"""Draws a dataset split's ground truth to PNGs, as the model receives it or as it is stored.

    python scripts/browse_dataset.py --config_file configs/mask_rcnn_r18_fpn_shapes.yaml --split train \
        --output_dir runs/shapes/browse --max_images 16
    python scripts/browse_dataset.py --model_dir runs/shapes --split val --raw --output_dir runs/shapes/browse_raw

By default each image goes through the split's own input pipeline (tfrcnn.data.pipeline.build_dataset): the train
split with its random scale, flip and padding to the static canvas (a new draw each run of the script is not
promised: the draws follow runtime.seed), val and test with the test-time resize and padding. What is drawn is
what the model gets: boxes and masks in network-input pixels (each gt mask is stored cropped to its box at
data.mask_crop_size² and is pasted back into its box here), crowd regions (ignore boxes) grey, the padding
darkened, objects of categories outside data.category_ids left out (the model never sees them). With --raw,
the decoded image as stored, boxes and full-image masks in its own pixels, every object (a category outside
data.category_ids is labelled by its id).

The split is read as training or evaluation reads it: its TFRecords, else its ann_file + img_prefix. An image that
does not decode is named on stderr and counted (data.corrupt_images 'skip'), or stops with its name ('error').
Files: <output_dir>/<source_id>.png.
"""
import os

from absl import flags

import _cli

flags.DEFINE_string("model_dir", None, "A training run's directory: its config.yaml is the config. Or give "
                    "--config_file.")
_cli.define_config_flags(default_help="Default: <model_dir>/config.yaml.")
flags.DEFINE_enum("split", "train", ["train", "val", "test"], "Section of config.data to draw.")
flags.DEFINE_string("output_dir", None, "Folder for the PNGs (created if needed).", required=True)
flags.DEFINE_integer("max_images", 20, "Draw at most this many images.", lower_bound=1)
flags.DEFINE_boolean("raw", False, "Draw the records as stored (original pixels, full-image masks), without the "
                     "pipeline's resize, flip and padding.")
FLAGS = flags.FLAGS


def main(_):
    from tfrcnn.config import CONFIG_NAME

    if FLAGS.config_file:
        _cli.check_config_files(FLAGS.config_file)
        files = FLAGS.config_file
    elif FLAGS.model_dir:
        files = [os.path.join(FLAGS.model_dir, CONFIG_NAME)]
        _cli.check_config_files(files)
    else:
        raise _cli.UsageError("give --config_file, or --model_dir (a training run's directory)")
    from tfrcnn.config import load_config
    from tfrcnn.data import coco, pipeline

    config = load_config(files, FLAGS.params_override)
    ids, names = coco.resolve_categories(config.data)
    class_names = dict(zip(ids, names))
    split_cfg = getattr(config.data, FLAGS.split)
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    skipped = pipeline.CorruptImages()
    draw = _draw_raw if FLAGS.raw else _draw_transformed
    with pipeline.input_errors(split_cfg.tfrecord):
        written = draw(config, ids, class_names, skipped)
    source = split_cfg.tfrecord or split_cfg.ann_file
    print(f"{FLAGS.split} ({source}): drew {written} images to {FLAGS.output_dir}"
          + (f"; skipped {len(skipped)} corrupt: {', '.join(skipped)}" if skipped else ""))
    return 0


def _save(drawing, source_id):
    from PIL import Image

    path = os.path.join(FLAGS.output_dir, f"{source_id}.png")
    Image.fromarray(drawing).save(path)
    return path


def _draw_transformed(config, ids, class_names, skipped):
    """The split's batches as the model gets them (boxes in padded-input pixels), one image at a time."""
    import numpy as np

    from tfrcnn import structures
    from tfrcnn.data import pipeline
    from tfrcnn.ops.image import denormalize
    from tfrcnn.ops.masks import paste_masks
    from tfrcnn.visualize import draw_ground_truth

    training = FLAGS.split == "train"
    dataset = pipeline.build_dataset(config, FLAGS.split, training=training, batch_size=1, corrupt_images=skipped,
                                     keep_source_id=True)
    category_of = np.array([0] + list(ids))  # model class c → category id; 0 (padding) stays 0
    written = 0
    for images, targets in dataset.take(FLAGS.max_images):
        image = denormalize(images[0], config.data.img_norm_cfg).numpy()
        classes = targets[structures.GT_CLASSES][0].numpy()
        valid = classes > 0
        boxes = targets[structures.GT_BOXES][0].numpy()[valid]
        ignore = targets[structures.IGNORE_BOXES][0].numpy()
        masks = None
        if structures.GT_MASKS in targets and valid.any():
            crops = targets[structures.GT_MASKS][:, :valid.sum()]
            masks = paste_masks(crops, boxes[None], image.shape[:2], threshold=0.5)[0].numpy()
        drawing = draw_ground_truth(image, boxes, category_of[classes[valid]],
                                    class_names, masks=masks, crowd_boxes=ignore[ignore.any(axis=1)],
                                    valid_size=targets[structures.IMAGE_SIZE][0].numpy())
        _save(drawing, targets[structures.SOURCE_ID][0].numpy().decode())
        written += 1
    return written


def _draw_raw(config, ids, class_names, skipped):
    """The split's records as stored: the decoded image, boxes in its pixels, full-image masks, every object."""
    import io

    import numpy as np
    from PIL import Image

    from tfrcnn.data import pipeline
    from tfrcnn.visualize import draw_ground_truth

    written = 0
    for ex in pipeline.read_examples(config, FLAGS.split, corrupt_images=skipped).take(FLAGS.max_images):
        ex = {k: v.numpy() for k, v in ex.items()}
        image = ex["image"]
        h, w = image.shape[:2]
        boxes = ex["boxes"] * np.array([h, w, h, w], np.float32)
        crowd = ex["is_crowd"] > 0
        masks = None
        if len(ex["masks"]) == len(boxes) and len(boxes):
            masks = np.stack([np.asarray(Image.open(io.BytesIO(png))) for png in ex["masks"]]) > 0
            masks = masks[~crowd]
        drawing = draw_ground_truth(image, boxes[~crowd], ex["labels"][~crowd], class_names, masks=masks,
                                    crowd_boxes=boxes[crowd])
        _save(drawing, ex["source_id"].decode())
        written += 1
    return written


if __name__ == "__main__":
    _cli.run(main)
