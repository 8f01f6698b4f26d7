"""MMDetection's MaxIoUAssigner: labels each anchor or proposal positive, negative or ignored.

Results use MMDetection's `gt_inds` convention, so a reader of MMDetection's code finds the same numbers:
  -1  ignored (between the thresholds, inside an ignore region, or padding),
   0  negative (background),
   k  positive, matched to gt box k - 1.
"""
import tensorflow as tf

from tfrcnn.ops.boxes import area, pairwise_iof, pairwise_iou

IGNORED, NEGATIVE = -1, 0


def max_iou_assign(boxes, gt_boxes, gt_valid, pos_iou_thr, neg_iou_thr, min_pos_iou=0.0, match_low_quality=True,
                   gt_max_assign_all=True, ignore_boxes=None, ignore_valid=None, ignore_iof_thr=-1.0,
                   ignore_wrt_candidates=True, boxes_valid=None, low_quality_gt="claiming"):
    """Assigns every box to a gt box, to background, or to nothing.

    Args:
      boxes: [B, N, 4] or [N, 4] (anchors shared by the batch) candidates, [y1, x1, y2, x2] in padded-input pixels.
      gt_boxes: [B, M, 4] gt boxes in the same frame, padded to M.
      gt_valid: bool [B, M]; False marks padding, which never matches anything.
      pos_iou_thr: a box whose best IoU is >= this is positive, matched to its best gt.
      neg_iou_thr: a float (best IoU in [0, thr) is negative) or a (lo, hi) pair (best IoU in [lo, hi)).
      min_pos_iou: with match_low_quality, a gt whose best IoU is >= this also claims the box(es) reaching it,
        so that each gt gets at least one positive even when no box reaches pos_iou_thr.
      gt_max_assign_all: claim every box tied at the gt's best IoU (True) or only the first (False).
      ignore_boxes: optional [B, K, 4] ignore regions (COCO crowd boxes), with `ignore_valid` bool [B, K].
      ignore_iof_thr: boxes whose intersection-over-foreground with an ignore region exceeds this are ignored;
        <= 0 disables it, as in MMDetection.
      ignore_wrt_candidates: IoF relative to the candidate's area (True) or to the ignore box's area.
      boxes_valid: optional bool [B, N]; False marks padded candidates (e.g. padded proposals): ignored.
      low_quality_gt: the gt a box made positive by match_low_quality is matched to: "claiming", the gt whose best
        match it is (MMDetection), or "best", the box's own highest-IoU gt (torchvision's and Detectron2's
        Matcher, which only relabel such a box positive). They differ when a box is one gt's best match but
        overlaps another gt more.
    Returns:
      gt_inds: int32 [B, N] in the convention of this module's docstring.
      max_overlaps: float32 [B, N], each box's best IoU with a real gt (0 when the image has none;
        -1 for boxes in an ignore region).
      matched: int32 [B, N], the index of the best gt (meaningful where gt_inds > 0).
    Ties follow MMDetection: the best gt of a box is the first at its maximum IoU; when several gts claim the same
    box through match_low_quality, the one listed last wins.
    """
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    gt_boxes = tf.convert_to_tensor(gt_boxes, tf.float32)
    gt_valid = tf.cast(gt_valid, tf.bool)
    batch = tf.shape(gt_boxes)[0]
    if boxes.shape.rank == 2:
        boxes = tf.broadcast_to(boxes[None], tf.stack([batch, tf.shape(boxes)[0], 4]))
    # Padding gets IoU -1, below every real IoU, so it is never a maximum and never matches.
    overlaps = pairwise_iou(boxes, gt_boxes, valid2=gt_valid, fill=-1.0)  # [B, N, M]

    ignored = tf.zeros(tf.shape(overlaps)[:2], tf.bool)
    if ignore_boxes is not None and ignore_iof_thr > 0:
        if ignore_wrt_candidates:
            iof = pairwise_iof(boxes, ignore_boxes, valid2=ignore_valid, fill=0.0)  # [B, N, K]
        else:
            iof = tf.linalg.matrix_transpose(pairwise_iof(ignore_boxes, boxes, valid1=ignore_valid, fill=0.0))
        ignored = tf.reduce_max(iof, axis=-1) > ignore_iof_thr  # -inf when K = 0
    if boxes_valid is not None:
        ignored |= ~tf.cast(boxes_valid, tf.bool)
    overlaps = tf.where(ignored[:, :, None], -1.0, overlaps)

    has_gt = tf.reduce_any(gt_valid, axis=-1, keepdims=True)  # [B, 1]
    max_overlaps = tf.maximum(tf.reduce_max(overlaps, axis=-1), -1.0)  # -inf → -1 when M = 0
    # An image without gt: every box is background, except the ignored ones.
    max_overlaps = tf.where(has_gt | ignored, max_overlaps, 0.0)
    matched = tf.argmax(overlaps, axis=-1, output_type=tf.int32) if overlaps.shape[-1] != 0 \
        else tf.zeros_like(max_overlaps, tf.int32)

    if isinstance(neg_iou_thr, (tuple, list)):
        negative = (max_overlaps >= neg_iou_thr[0]) & (max_overlaps < neg_iou_thr[1])
    else:
        negative = (max_overlaps >= 0) & (max_overlaps < neg_iou_thr)
    gt_inds = tf.where(negative, NEGATIVE, IGNORED)
    gt_inds = tf.where(max_overlaps >= pos_iou_thr, matched + 1, gt_inds)

    if match_low_quality:
        gt_max = tf.reduce_max(overlaps, axis=1, keepdims=True)  # [B, 1, M], best IoU per gt
        claims = (overlaps == gt_max) & (gt_max >= min_pos_iou) & gt_valid[:, None, :]  # [B, N, M]
        if not gt_max_assign_all:
            first = tf.argmax(tf.cast(claims, tf.int32), axis=1, output_type=tf.int32)  # [B, M]
            claims &= tf.range(tf.shape(overlaps)[1])[None, :, None] == first[:, None, :]
        # MMDetection loops over gts in order, so the last gt to claim a box keeps it.
        m_index = tf.range(1, tf.shape(overlaps)[2] + 1)
        last_claim = tf.maximum(tf.reduce_max(tf.where(claims, m_index[None, None, :], 0), axis=-1), 0)
        if low_quality_gt == "claiming":
            gt_inds = tf.where(last_claim > 0, last_claim, gt_inds)
            matched = tf.where(last_claim > 0, last_claim - 1, matched)
        elif low_quality_gt == "best":
            gt_inds = tf.where(last_claim > 0, matched + 1, gt_inds)
        else:
            raise ValueError(f"max_iou_assign: low_quality_gt {low_quality_gt!r}: expected 'claiming' or 'best'")
    return gt_inds, max_overlaps, matched


class MaxIoUAssigner:
    """`max_iou_assign` with the settings of one `assigner` config section (train_cfg.rpn or train_cfg.rcnn).

    `assign(boxes, gt_boxes, gt_valid, ignore_boxes=None, boxes_valid=None)` → (gt_inds, max_overlaps, matched).
    An ignore row of positive area is a region (COCO crowd boxes); the rest, the all-zero padding among them,
    ignore nothing. Ignore regions count only with ignore_iof_thr > 0.
    """

    def __init__(self, cfg):
        self.cfg = cfg

    def assign(self, boxes, gt_boxes, gt_valid, ignore_boxes=None, boxes_valid=None):
        c, ignore_valid = self.cfg, None
        if ignore_boxes is not None and c.ignore_iof_thr > 0:
            ignore_boxes = tf.cast(ignore_boxes, tf.float32)
            ignore_valid = area(ignore_boxes) > 0
        else:
            ignore_boxes = None
        return max_iou_assign(boxes, gt_boxes, gt_valid, c.pos_iou_thr, c.neg_iou_thr, c.min_pos_iou,
                              c.match_low_quality, c.gt_max_assign_all, ignore_boxes, ignore_valid, c.ignore_iof_thr,
                              c.ignore_wrt_candidates, boxes_valid, c.low_quality_gt)
