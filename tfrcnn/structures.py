"""The batch structure: what the input pipeline produces and the detectors' `train_step` consumes.

Defined once here, so that `tfrcnn.data` and `tfrcnn.modeling` agree without knowing each other.

A training batch is `(images, targets)`:
- `images`: float32 [B, H, W, 3], normalized and padded to one static (H, W) — the padded network input.
- `targets`: a dict
  - `gt_boxes`: float32 [B, M, 4], [y1, x1, y2, x2] in padded-input pixels, padded to M = `max_instances`;
  - `gt_classes`: int32 [B, M], 1..num_classes, 0 for padding (so `gt_classes > 0` is the validity mask);
  - `gt_masks`: [B, M, S, S] float32 (or uint8) in [0, 1], each gt mask cropped to its own gt box at S×S
    (Mask R-CNN only; S = `data.mask_crop_size`, 112 as Model Garden);
  - `gt_mask_boxes`: float32 [B, M, 4], optional: the frame each gt mask covers, in padded-input pixels, when
    the masks are not crops of their gt boxes (e.g. full-image masks, as torchvision's targets hold them: every
    frame [0, 0, H, W] with S×S = H×W); absent, each mask covers its gt box;
  - `ignore_boxes`: float32 [B, K, 4], regions whose anchors/proposals are neither positive nor negative
    (COCO crowd boxes, with `ignore_iof_thr`); all-zero rows are padding (optional);
  - `image_size`: int32 [B, 2], each image's true (resized, unpadded) (height, width) in the padded input.
  Evaluation batches also carry `source_id` string [B] (Model Garden's `image/source_id`, the COCO image id),
  `original_size` int32 [B, 2] (the decoded image's (h, w)) and `scale` float32 [B, 2] (resized / original, per
  axis: a box in padded-input pixels maps to original pixels by dividing y by scale[0] and x by scale[1]);
  the models ignore them.
"""
import tensorflow as tf

GT_BOXES, GT_CLASSES, GT_MASKS, GT_MASK_BOXES = "gt_boxes", "gt_classes", "gt_masks", "gt_mask_boxes"
IGNORE_BOXES, IMAGE_SIZE = "ignore_boxes", "image_size"
# Evaluation batches only: the COCO image id (string), the original (h, w), and (resized / original) per axis.
SOURCE_ID, ORIGINAL_SIZE, SCALE = "source_id", "original_size", "scale"
REQUIRED_KEYS = (GT_BOXES, GT_CLASSES, IMAGE_SIZE)


def check_targets(targets, with_mask):
    """Raises a ValueError naming what a targets dict lacks; returns it with `ignore_boxes` filled in if absent."""
    if not isinstance(targets, dict):
        raise ValueError(f"targets must be a dict with keys {REQUIRED_KEYS}, got {type(targets).__name__}")
    required = REQUIRED_KEYS + ((GT_MASKS,) if with_mask else ())
    missing = [k for k in required if k not in targets]
    if missing:
        raise ValueError(f"targets lack {missing}; they have {sorted(targets)} (see tfrcnn/structures.py)")
    targets = dict(targets)
    if IGNORE_BOXES not in targets:
        boxes = targets[GT_BOXES]
        targets[IGNORE_BOXES] = tf.zeros([tf.shape(boxes)[0], 1, 4], tf.float32)
    return targets
