"""MMDetection's RandomSampler: a fixed-size, class-balanced random subset of the assigned boxes.

MMDetection samples a variable number of boxes per image. Here the output always has `num` slots per image,
with a validity mask, so that a batch keeps one static shape (shapes are static in training: README, "Conventions").
"""
import collections

import tensorflow as tf


def add_gt_as_proposals(proposals, proposals_valid, gt_boxes, gt_valid):
    """Prepends the gt boxes to the proposals (`add_gt_as_proposals=True`, used by the R-CNN stage).

    Args:
      proposals: [B, N, 4] in padded-input pixels; proposals_valid: bool [B, N].
      gt_boxes: [B, M, 4] in the same frame; gt_valid: bool [B, M].
    Returns:
      boxes [B, M + N, 4] and valid bool [B, M + N], gt first, as MMDetection concatenates them.
    """
    boxes = tf.concat([tf.cast(gt_boxes, proposals.dtype), proposals], axis=1)
    valid = tf.concat([tf.cast(gt_valid, tf.bool), tf.cast(proposals_valid, tf.bool)], axis=1)
    return boxes, valid


def assign_gt_proposals_to_themselves(gt_inds, matched, gt_valid):
    """MMDetection's `AssignResult.add_gt_`: each prepended gt box is a positive of its own gt.

    Args:
      gt_inds, matched: int32 [B, M + N] from `max_iou_assign` over `add_gt_as_proposals` boxes.
      gt_valid: bool [B, M]; padded gt slots become ignored.
    Returns:
      gt_inds, matched with the first M entries overwritten.
    """
    num_gt = tf.shape(gt_valid)[1]
    own = tf.broadcast_to(tf.range(num_gt)[None], tf.shape(gt_valid))
    head_inds = tf.where(tf.cast(gt_valid, tf.bool), own + 1, -1)
    gt_inds = tf.concat([head_inds, gt_inds[:, num_gt:]], axis=1)
    matched = tf.concat([own, matched[:, num_gt:]], axis=1)
    return gt_inds, matched


_MASK32 = 0xFFFFFFFF


def _mix32(x):
    """murmur3's 32-bit finalizer on int64 tensors holding uint32 values: a bijection that scatters bits."""
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))
    x = tf.bitwise.bitwise_and(x * 0x85EBCA6B, _MASK32)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 13))
    x = tf.bitwise.bitwise_and(x * 0xC2B2AE35, _MASK32)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))


def per_image_uniform(seeds, n, salt=0):
    """Uniform noise [B, n] in [0, 1) from per-image seeds [B, 2], with no state and no per-image loop.

    Counter-based (a hash of seed, salt and position), so an image's noise depends only on its own seed: the same
    image gets the same noise whichever replica, batch position or batch size it is processed in. That is what
    makes a distributed step sample exactly as a single-device step on the same global batch does.
    """
    seeds = tf.bitwise.bitwise_and(tf.cast(seeds, tf.int64), _MASK32)
    key = _mix32(tf.bitwise.bitwise_xor(_mix32(seeds[:, 0:1] + (salt * 0x9E3779B9 & _MASK32)), seeds[:, 1:2]))
    counter = tf.range(n, dtype=tf.int64)[None, :]
    bits = _mix32(tf.bitwise.bitwise_xor(tf.bitwise.bitwise_and(_mix32(key) + counter * 0x9E3779B9, _MASK32), key))
    return tf.cast(tf.bitwise.right_shift(bits, 8), tf.float32) * (1.0 / (1 << 24))


def image_seeds(seed, batch_size):
    """Per-image seeds [B, 2] from one seed [2] (image b gets (seed[0], seed[1] + b)), or [B, 2] seeds as they are."""
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    if seed.shape.rank == 2:
        return seed
    offsets = tf.stack([tf.zeros([batch_size], tf.int64), tf.range(batch_size, dtype=tf.int64)], axis=1)
    return seed[None, :] + offsets


def _random_top(candidates, k, seeds, salt):
    """Indices [B, k] of a uniformly random subset of the True entries of `candidates` [B, N], and their mask.

    Random keys in [0, 1) for candidates and -1 for the rest: the top k keys are a uniform sample without
    replacement of min(k, count) candidates, in random order, followed by non-candidates marked invalid.
    """
    noise = per_image_uniform(seeds, candidates.shape[1], salt)
    keys = tf.where(candidates, noise, -1.0)
    values, indices = tf.math.top_k(keys, k=k, sorted=True)
    return indices, values >= 0.0


def random_sample(gt_inds, num, pos_fraction, seed, neg_pos_ub=-1):
    """Samples up to `num` boxes per image, at most `int(num * pos_fraction)` of them positive.

    Args:
      gt_inds: int32 [B, N] from `max_iou_assign` (k > 0 positive, 0 negative, -1 ignored: never sampled).
      num: sample slots per image (256 for the RPN, 512 for the R-CNN in MMDetection's configs).
      pos_fraction: the largest share of positives; negatives fill the rest of the `num` slots.
      seed: int tensor or tuple of shape [2] (image b then uses (seed[0], seed[1] + b)), or per-image seeds
        [B, 2]. The same seed gives the same sample; an image's sample depends only on its own seed.
      neg_pos_ub: if >= 0, at most `int(neg_pos_ub * max(1, num_pos))` negatives (MMDetection's upper bound).
    Returns:
      indices: int32 [B, num] into the N boxes; positives first, then negatives, then padding (index 0).
      valid: bool [B, num], True for the sampled slots.
      positive: bool [B, num], True for sampled positives.
    """
    n = gt_inds.shape[1]
    if n is None:
        raise ValueError("random_sample: the number of boxes must be static")
    seeds = image_seeds(seed, tf.shape(gt_inds)[0])
    num_pos_expected = min(int(num * pos_fraction), n)
    pos_idx, pos_ok = _random_top(gt_inds > 0, num_pos_expected, seeds, salt=1)
    neg_idx, neg_ok = _random_top(tf.equal(gt_inds, 0), min(num, n), seeds, salt=2)

    num_pos = tf.reduce_sum(tf.cast(pos_ok, tf.int32), axis=1, keepdims=True)  # [B, 1]
    num_neg = num - num_pos
    if neg_pos_ub >= 0:
        bound = tf.cast(tf.floor(neg_pos_ub * tf.cast(tf.maximum(num_pos, 1), tf.float32)), tf.int32)
        num_neg = tf.minimum(num_neg, bound)
    neg_ok &= tf.range(tf.shape(neg_idx)[1])[None, :] < num_neg

    # Compact: valid positives, then valid negatives, in slot order; ranking by -position keeps that order.
    indices = tf.concat([pos_idx, neg_idx], axis=1)
    valid = tf.concat([pos_ok, neg_ok], axis=1)
    positive = tf.concat([pos_ok, tf.zeros_like(neg_ok)], axis=1)
    slots = indices.shape[1]
    order_key = tf.where(valid, -tf.range(slots, dtype=tf.float32)[None, :], -float(slots + 1))
    _, order = tf.math.top_k(order_key, k=min(num, slots), sorted=True)
    indices, valid, positive = [tf.gather(t, order, batch_dims=1) for t in (indices, valid, positive)]
    if slots < num:  # fewer boxes than slots: pad to the static size
        pad = [[0, 0], [0, num - slots]]
        indices, valid, positive = [tf.pad(t, pad) for t in (indices, valid, positive)]
    indices = tf.where(valid, indices, 0)
    return indices, valid, positive


# One stage's sampled boxes: `boxes` [B, num, 4] the sampled candidates; `indices` int32 [B, num] into the candidates
# (the gt first when add_gt_as_proposals); `valid`, `positive` bool [B, num]; `matched` int32 [B, num], the gt of
# each slot (meaningful where positive).
Sample = collections.namedtuple("Sample", ["boxes", "indices", "valid", "positive", "matched"])


class RandomSampler:
    """`random_sample` with the settings of one `sampler` config section, and MMDetection's assign-then-sample step
    of a stage: `sample(assigner, boxes, gt_boxes, gt_valid, seed, boxes_valid=None, ignore_boxes=None)`.

    boxes: the candidates, [N, 4] (anchors shared by the batch) or [B, N, 4] (proposals), with `boxes_valid` bool
    [B, N] (None: all); gt_boxes [B, M, 4] with gt_valid bool [B, M]; ignore_boxes [B, K, 4] or None; all in the same
    pixel frame. With add_gt_as_proposals the gt boxes join the candidates first, each a positive of its own gt.
    Returns a `Sample`.
    """

    def __init__(self, cfg):
        self.cfg = cfg

    def sample(self, assigner, boxes, gt_boxes, gt_valid, seed, boxes_valid=None, ignore_boxes=None):
        c = self.cfg
        if c.add_gt_as_proposals:
            boxes, boxes_valid = add_gt_as_proposals(boxes, boxes_valid, gt_boxes, gt_valid)
        gt_inds, _, matched = assigner.assign(boxes, gt_boxes, gt_valid, ignore_boxes, boxes_valid)
        if c.add_gt_as_proposals:
            gt_inds, matched = assign_gt_proposals_to_themselves(gt_inds, matched, gt_valid)
        indices, valid, positive = random_sample(gt_inds, c.num, c.pos_fraction, seed, c.neg_pos_ub)
        sampled = tf.gather(boxes, indices, batch_dims=0 if boxes.shape.rank == 2 else 1)
        return Sample(sampled, indices, valid, positive, tf.gather(matched, indices, batch_dims=1))
