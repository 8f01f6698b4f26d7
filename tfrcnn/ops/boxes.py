"""Box arithmetic: area, pairwise IoU / IoF, clipping, and the DeltaXYWHBBoxCoder.

Boxes are float32 [..., 4] as [y1, x1, y2, x2] in absolute pixels of one frame (the caller's: padded
network input or original image). Width is `x2 - x1` with no `+1`, as in MMDetection v2 and torchvision.
"""
import math

import tensorflow as tf

# MMDetection's `wh_ratio_clip=16/1000` and torchvision's `bbox_xform_clip`: a predicted log-scale
# delta larger than this would grow a box more than 1000/16 times.
DEFAULT_DELTA_CLAMP = math.log(1000.0 / 16)


def area(boxes):
    """Area of [..., 4] boxes ([y1, x1, y2, x2], any frame) → [...]. Inverted boxes count as 0."""
    y1, x1, y2, x2 = tf.unstack(boxes, 4, axis=-1)
    return tf.maximum(y2 - y1, 0.0) * tf.maximum(x2 - x1, 0.0)


def _intersection(boxes1, boxes2):
    """Pairwise intersection areas of [B, N, 4] and [B, M, 4] boxes (same frame) → [B, N, M]."""
    y1a, x1a, y2a, x2a = tf.split(boxes1, 4, axis=-1)  # each [B, N, 1]
    y1b, x1b, y2b, x2b = [tf.linalg.matrix_transpose(t) for t in tf.split(boxes2, 4, axis=-1)]  # [B, 1, M]
    h = tf.maximum(tf.minimum(y2a, y2b) - tf.maximum(y1a, y1b), 0.0)
    w = tf.maximum(tf.minimum(x2a, x2b) - tf.maximum(x1a, x1b), 0.0)
    return h * w


def _mask_pairs(values, valid1, valid2, fill):
    """Sets `values` [B, N, M] to `fill` wherever box n of side 1 or box m of side 2 is padding."""
    if valid1 is None and valid2 is None:
        return values
    keep = tf.ones_like(values, dtype=tf.bool)
    if valid1 is not None:
        keep &= tf.cast(valid1, tf.bool)[:, :, None]
    if valid2 is not None:
        keep &= tf.cast(valid2, tf.bool)[:, None, :]
    return tf.where(keep, values, tf.cast(fill, values.dtype))


def pairwise_iou(boxes1, boxes2, valid1=None, valid2=None, fill=0.0):
    """Intersection over union of every pair.

    Args:
      boxes1: [B, N, 4] boxes, [y1, x1, y2, x2], in the same pixel frame as `boxes2`.
      boxes2: [B, M, 4].
      valid1, valid2: optional bool [B, N] / [B, M]; False marks a padded entry.
      fill: the value a pair with a padded side gets (0 by default; the assigner uses -1 so padding
        can never be a maximum).
    Returns:
      [B, N, M] float32 in [0, 1] for real pairs. A pair whose union is empty (two zero-area boxes) has IoU 0.
    """
    inter = _intersection(boxes1, boxes2)
    union = area(boxes1)[:, :, None] + area(boxes2)[:, None, :] - inter
    iou = tf.math.divide_no_nan(inter, union)
    return _mask_pairs(iou, valid1, valid2, fill)


def pairwise_iof(boxes1, boxes2, valid1=None, valid2=None, fill=0.0):
    """Intersection over the area of `boxes1` ("foreground"), MMDetection's `mode='iof'`.

    Used to find anchors/proposals (`boxes1`, [B, N, 4]) that lie mostly inside ignore regions such as
    COCO crowd boxes (`boxes2`, [B, M, 4]); both in the same pixel frame. Returns [B, N, M].
    """
    inter = _intersection(boxes1, boxes2)
    iof = tf.math.divide_no_nan(inter, area(boxes1)[:, :, None])
    return _mask_pairs(iof, valid1, valid2, fill)


def clip_boxes(boxes, image_size):
    """Clips [..., 4] boxes to an image.

    Args:
      boxes: [B, N, 4] (or [N, 4]) boxes in the frame of the image.
      image_size: [B, 2] (or [2]) as (height, width); per image when batched, so each image is clipped to
        its own true (unpadded) size.
    Returns:
      Boxes of the same shape with y in [0, height] and x in [0, width].
    """
    image_size = tf.cast(image_size, boxes.dtype)
    if image_size.shape.rank == 2:
        image_size = image_size[:, None, :]  # [B, 1, 2] broadcasts over N
    h, w = image_size[..., 0:1], image_size[..., 1:2]
    limits = tf.concat([h, w, h, w], axis=-1)
    return tf.minimum(tf.maximum(boxes, 0.0), limits)


def _centers_sizes(boxes):
    y1, x1, y2, x2 = tf.unstack(boxes, 4, axis=-1)
    h, w = y2 - y1, x2 - x1
    return y1 + 0.5 * h, x1 + 0.5 * w, h, w


def encode_boxes(boxes, anchors, target_means=(0.0, 0.0, 0.0, 0.0), target_stds=(1.0, 1.0, 1.0, 1.0)):
    """DeltaXYWHBBoxCoder.encode: regression targets that turn `anchors` into `boxes`.

    Args:
      boxes: [..., 4] target boxes, [y1, x1, y2, x2].
      anchors: [..., 4] reference boxes (anchors or proposals) in the same frame; broadcastable to `boxes`.
      target_means, target_stds: 4 floats each, in MMDetection's delta order (dx, dy, dw, dh).
        torchvision's `weights=(wx, wy, ww, wh)` are `target_stds = 1 / weights`.
    Returns:
      [..., 4] deltas in the order (dx, dy, dw, dh), the order of MMDetection and torchvision, so
      their configs' means/stds and their regression layers' weights carry over unpermuted:
      dx = (gx - px) / pw, dy = (gy - py) / ph, dw = log(gw / pw), dh = log(gh / ph), then (d - mean) / std.
    """
    gy, gx, gh, gw = _centers_sizes(boxes)
    py, px, ph, pw = _centers_sizes(anchors)
    deltas = tf.stack([(gx - px) / pw, (gy - py) / ph, tf.math.log(gw / pw), tf.math.log(gh / ph)], axis=-1)
    means = tf.constant(target_means, deltas.dtype)
    stds = tf.constant(target_stds, deltas.dtype)
    return (deltas - means) / stds


def decode_boxes(deltas, anchors, target_means=(0.0, 0.0, 0.0, 0.0), target_stds=(1.0, 1.0, 1.0, 1.0),
                 clamp="both", max_ratio=DEFAULT_DELTA_CLAMP):
    """DeltaXYWHBBoxCoder.decode: applies (dx, dy, dw, dh) deltas to reference boxes.

    Args:
      deltas: [..., 4] in the order (dx, dy, dw, dh), normalized by `target_means` / `target_stds`.
      anchors: [..., 4] reference boxes [y1, x1, y2, x2]; broadcastable to `deltas`.
      clamp: how the log-scale deltas dw, dh are bounded by `max_ratio` before `exp`:
        "both" clamps to [-max_ratio, max_ratio] (MMDetection), "above" only from above (torchvision).
    Returns:
      [..., 4] boxes [y1, x1, y2, x2] in the anchors' frame; not clipped (see `clip_boxes`).
    """
    means = tf.constant(target_means, deltas.dtype)
    stds = tf.constant(target_stds, deltas.dtype)
    dx, dy, dw, dh = tf.unstack(deltas * stds + means, 4, axis=-1)
    if clamp == "both":
        dw = tf.clip_by_value(dw, -max_ratio, max_ratio)
        dh = tf.clip_by_value(dh, -max_ratio, max_ratio)
    elif clamp == "above":
        dw = tf.minimum(dw, max_ratio)
        dh = tf.minimum(dh, max_ratio)
    else:
        raise ValueError(f"decode_boxes: clamp must be 'both' or 'above', got {clamp!r}")
    py, px, ph, pw = _centers_sizes(anchors)
    cy, cx = py + ph * dy, px + pw * dx
    h, w = ph * tf.exp(dh), pw * tf.exp(dw)
    return tf.stack([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h, cx + 0.5 * w], axis=-1)


class DeltaXYWHBBoxCoder:
    """MMDetection's DeltaXYWHBBoxCoder with the settings of one `bbox_coder` config section: `encode_boxes` and
    `decode_boxes` with its target means and stds, dw and dh clamped at |log(wh_ratio_clip)| as delta_clamp says."""

    def __init__(self, cfg):
        self.cfg, self.max_ratio = cfg, abs(math.log(cfg.wh_ratio_clip))

    def encode(self, boxes, anchors):
        return encode_boxes(boxes, anchors, self.cfg.target_means, self.cfg.target_stds)

    def decode(self, deltas, anchors):
        c = self.cfg
        return decode_boxes(deltas, anchors, c.target_means, c.target_stds, c.delta_clamp, self.max_ratio)
