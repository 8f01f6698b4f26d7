"""Non-maximum suppression: RPN proposals (NMS per FPN level) and final detections (NMS per class).

Both are built on `tf.image.combined_non_max_suppression`, which does a batched NMS for every "class"
column of a score matrix and keeps the best `max_total_size` results over all classes, padded to a
static size. Its semantics, checked empirically on TF 2.21's CPU kernel and in its source (the tests
pin them down):
  * a box is a candidate iff `score > score_threshold` (strict);
  * a box is suppressed by an already kept box iff `IoU > iou_threshold` (IoU equal to the threshold
    is kept), which is torchvision's `nms` rule; IoU uses widths without +1, like `ops.boxes`, and the
    same float32 arithmetic as torchvision's CPU kernel. The kernel compares with a float32 threshold
    while torchvision compares with a float64 one, so `_float32_at_most` rounds the threshold down;
  * with `clip_boxes=False` boxes come back bit-exact (the default clips them to [0, 1]);
  * the CPU kernel pads each class's result list with dummy entries scored -1.0 and sorts real and
    dummy entries together, so a kept score <= -1 can lose its place to a zero box. Scores here are
    probabilities in [0, 1] and the threshold we pass is never below -1, which keeps clear of that;
  * TF's GPU NMS kernels skip the score filter when the threshold is float32's lowest value or below,
    which would let masked-out entries through (not checked on a GPU here; read in TF's source);
    again, our threshold is never below -1.
Entries that must never be output (another level's column, a box the caller marked invalid) get the
score `_MASKED`, which no threshold we pass lets through.

`CombinedNonMaxSuppression` has no XLA kernel: call these functions outside `jit_compile=True` code.
"""
import tensorflow as tf

# Lowest threshold we hand to the kernel: every probability (>= 0) passes it, and nothing kept scores
# <= -1 (see the module docstring).
_KEEP_ALL = -1.0
_MASKED = float("-inf")


def _float32_at_most(x):
    """The largest float32 <= x. torchvision suppresses float32 IoUs `> x` compared in float64; where
    float32(x) rounds up (0.3 → 0.30000001), an IoU equal to it is above x, yet not above float32(x)."""
    # A Python float must reach float64 directly: tf.cast would first make it a float32 tensor.
    x64 = tf.cast(x, tf.float64) if tf.is_tensor(x) else tf.constant(x, tf.float64)
    x32 = tf.cast(x64, tf.float32)
    return tf.where(tf.cast(x32, tf.float64) > x64, tf.math.nextafter(x32, tf.constant(-1.0)), x32)


def _combined_nms(boxes, scores, iou_thr, score_thr, max_per_img):
    """Runs the kernel on boxes [B, N, Q, 4] and scores [B, N, C]; K = max_per_img results per image.

    Each class keeps at most K boxes: greedy NMS is unaffected by stopping a class early, and no class
    can contribute more than K to the overall top K, so this equals NMS without limits then top K.
    Returns (boxes [B, K, 4], scores [B, K], class columns int32 [B, K], valid bool [B, K]).
    """
    out = tf.image.combined_non_max_suppression(
        boxes, scores, max_output_size_per_class=max_per_img, max_total_size=max_per_img,
        iou_threshold=_float32_at_most(iou_thr), score_threshold=score_thr, clip_boxes=False)
    valid = tf.range(max_per_img)[None, :] < out.valid_detections[:, None]
    return out.nmsed_boxes, out.nmsed_scores, tf.cast(out.nmsed_classes, tf.int32), valid


def multilevel_proposals(boxes, scores, nms_thr, max_per_img, nms_across_levels=False, valid=None):
    """RPN proposal NMS (MMDetection's RPNHead; torchvision's `filter_proposals`): NMS per level, then top-k.

    Each FPN level is its own NMS "class", as MMDetection's and torchvision's `batched_nms` with level
    ids: a box can only suppress boxes of its own level. The survivors of all levels are then ranked
    together and the best `max_per_img` kept.

    Args:
      boxes: list over levels of [B, N_l, 4] proposal boxes [y1, x1, y2, x2] in padded-input pixels,
        already top-k'd (nms_pre), decoded and clipped by the caller.
      scores: list over levels of [B, N_l] objectness probabilities in [0, 1].
      nms_thr: IoU threshold; a box is suppressed by a higher-scoring one when IoU > nms_thr.
      max_per_img: Python int, the number of proposals kept per image (MMDetection's max_per_img /
        nms_post, torchvision's post_nms_top_n).
      nms_across_levels: True runs one NMS over all levels together.
      valid: optional list over levels of bool [B, N_l]; False entries (e.g. below min_bbox_size) are
        never output and suppress nothing.
    Returns:
      proposals [B, max_per_img, 4] (padded-input pixels), proposal_scores [B, max_per_img] and
      valid bool [B, max_per_img]; sorted by score descending, padding (boxes 0, score 0, valid False)
      after the real proposals.
    """
    num_levels = len(boxes)
    level_ids = tf.concat([tf.fill(tf.shape(s)[1:2], l) for l, s in enumerate(scores)], axis=0)  # [N]
    boxes = tf.cast(tf.concat(boxes, axis=1), tf.float32)
    scores = tf.cast(tf.concat(scores, axis=1), tf.float32)
    if valid is not None:
        scores = tf.where(tf.concat(valid, axis=1), scores, _MASKED)
    if nms_across_levels:
        scores = scores[:, :, None]  # [B, N, 1]: a single class
    else:
        # Level as class: a box's score sits in its own level's column only; the others are masked.
        in_level = tf.one_hot(level_ids, num_levels, on_value=True, off_value=False)  # [N, L]
        scores = tf.where(in_level[None], scores[:, :, None], _MASKED)  # [B, N, L]
    proposals, proposal_scores, _, keep = _combined_nms(
        boxes[:, :, None, :], scores, nms_thr, _KEEP_ALL, max_per_img)
    return proposals, proposal_scores, keep


def multiclass_nms(boxes, scores, score_thr, iou_thr, max_per_img, valid=None):
    """Final detections (MMDetection's `multiclass_nms`, torchvision's `postprocess_detections`).

    Keeps the (box, class) pairs with score > score_thr (strict, as both libraries do), runs NMS per
    class, and keeps the best `max_per_img` over all classes.

    Args:
      boxes: [B, N, C, 4] class-specific boxes, or [B, N, 1, 4] shared by all classes; [y1, x1, y2, x2]
        in one pixel frame (the padded input, or the original image), which the outputs share.
      scores: [B, N, C] foreground probabilities in [0, 1]; the background column is already removed,
        so column c is class c + 1.
      score_thr: pairs scoring <= score_thr are dropped (a value below 0 keeps every pair).
      iou_thr: a box is suppressed by a higher-scoring box of its class when IoU > iou_thr.
      max_per_img: Python int K, the number of detections kept per image.
      valid: optional bool [B, N, C]; False pairs (e.g. torchvision's boxes under 1e-2 px) are never
        output and suppress nothing.
    Returns:
      A dict with detection_boxes [B, K, 4], detection_scores [B, K], detection_classes int32 [B, K]
      in 1..C (0 for padding) and num_detections int32 [B]; sorted by score descending, padding
      (boxes 0, scores 0, class 0) after the real detections.
    """
    boxes = tf.cast(boxes, tf.float32)
    scores = tf.cast(scores, tf.float32)
    if valid is not None:
        scores = tf.where(valid, scores, _MASKED)
    # A threshold below -1 would reach the kernel's two pitfalls (module docstring); for probabilities
    # it keeps exactly what -1 keeps.
    score_thr = tf.maximum(tf.cast(score_thr, tf.float32), _KEEP_ALL)
    det_boxes, det_scores, columns, keep = _combined_nms(boxes, scores, iou_thr, score_thr, max_per_img)
    return {
        "detection_boxes": det_boxes,
        "detection_scores": det_scores,
        "detection_classes": tf.where(keep, columns + 1, 0),
        "num_detections": tf.reduce_sum(tf.cast(keep, tf.int32), axis=1),
    }
