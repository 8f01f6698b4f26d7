"""Loss functions the heads share (MMDetection's `loss_bbox` types)."""
import tensorflow as tf


def bbox_loss(pred, target, cfg):
    """Elementwise L1Loss or SmoothL1Loss(beta) of [..., 4] deltas, not reduced and not weighted.

    Args:
      pred, target: [..., 4] float32 deltas (dx, dy, dw, dh).
      cfg: a `BBoxLossCfg` (type "L1Loss" or "SmoothL1Loss", beta).
    """
    diff = tf.abs(pred - target)
    if cfg.type == "L1Loss" or cfg.beta <= 0:  # SmoothL1 with beta 0 is L1 (as torch's), without a 0/0 branch
        return diff
    return tf.where(diff < cfg.beta, 0.5 * tf.square(diff) / cfg.beta, diff - 0.5 * cfg.beta)
