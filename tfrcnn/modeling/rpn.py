"""RPNHead: objectness and box deltas on every FPN level, their losses, and proposals.

One head is shared by all levels: a 3×3 conv + ReLU, then two 1×1 convs. With A anchors per location:

  sublayer     output    torchvision state_dict key                 MMDetection key
  rpn_conv     C_feat    rpn.head.conv.0.0.{weight,bias} (legacy:   rpn_head.rpn_conv.*
                         rpn.head.conv.{weight,bias})
  rpn_cls      A         rpn.head.cls_logits.{weight,bias}          rpn_head.rpn_cls.*
  rpn_reg      4A        rpn.head.bbox_pred.{weight,bias}           rpn_head.rpn_reg.*

Keras variables are `rpn_head/<sublayer>/{kernel,bias}`; a torch conv weight (O, I, kh, kw) becomes the
kernel (kh, kw, I, O). Output channel a of rpn_cls is anchor a, channel a*4 + j of rpn_reg is delta j
(dx, dy, dw, dh) of anchor a, in both libraries, so no channel is permuted.

Every per-anchor tensor of a level is flattened in the order (H, W, A): feature-map locations row-major,
then the base anchors, which is the order of `tfrcnn.ops.anchors.AnchorGenerator`.

Boxes (anchors, gt, proposals) are [y1, x1, y2, x2] in padded-network-input pixels.
"""
import keras
import tensorflow as tf

from tfrcnn.config import RPNHeadCfg, RPNTrainCfg
from tfrcnn.modeling.fpn import spatial_size
from tfrcnn.modeling.layers import ConfiguredLayer
from tfrcnn.modeling.losses import bbox_loss
from tfrcnn.ops.anchors import anchor_generator_from_config
from tfrcnn.ops.assign import MaxIoUAssigner
from tfrcnn.ops.boxes import DeltaXYWHBBoxCoder, clip_boxes
from tfrcnn.ops.nms import multilevel_proposals
from tfrcnn.ops.sample import RandomSampler


def _normal_init():
    return keras.initializers.RandomNormal(mean=0.0, stddev=0.01)


def _flatten_anchors(x, per_anchor, num_anchors):
    """[B, H, W, A * k] → [B, H * W * A, k]; the anchor count stays static when H and W are."""
    h, w = x.shape[1], x.shape[2]
    n = -1 if h is None or w is None else h * w * num_anchors
    return tf.reshape(x, [tf.shape(x)[0], n, per_anchor])


def anchor_inside_flags(anchors, image_size, allowed_border):
    """MMDetection's `anchor_inside_flags`: anchors that stay within `allowed_border` px of the image.

    Args:
      anchors: [N, 4] in padded-input pixels.
      image_size: int32 [B, 2], each image's true (h, w) inside the padded input.
      allowed_border: pixels an anchor may extend past the image; < 0 keeps every anchor.
    Returns:
      bool [B, N].
    """
    size = tf.cast(image_size, tf.float32)[:, None, :]  # [B, 1, 2]
    b = float(allowed_border)
    if allowed_border < 0:
        return tf.ones([tf.shape(size)[0], tf.shape(anchors)[0]], tf.bool)
    y1, x1, y2, x2 = [t[None] for t in tf.unstack(anchors, 4, axis=-1)]  # each [1, N]
    return ((y1 >= -b) & (x1 >= -b)
            & (y2 < size[..., 0] + b) & (x2 < size[..., 1] + b))  # strict, as MMDetection


class RPNHead(ConfiguredLayer):
    """MMDetection's RPNHead with a sigmoid objectness per anchor.

    Args:
      cfg: `RPNHeadCfg` (model.rpn_head): channels, anchor generator, box coder and losses.
      train_cfg: `RPNTrainCfg` (train_cfg.rpn): assigner, sampler, allowed_border, pos_weight; may be None
        for a model that only predicts (then `loss_terms` raises).
    """
    SECTIONS = {"cfg": RPNHeadCfg, "train_cfg": RPNTrainCfg}

    def __init__(self, cfg: RPNHeadCfg, train_cfg: RPNTrainCfg = None, name="rpn_head", **kwargs):
        super().__init__(name=name, **kwargs)
        if not cfg.loss_cls.use_sigmoid:
            raise ValueError("RPNHead: only a sigmoid objectness is supported (loss_cls.use_sigmoid: true); "
                             "a 2-class softmax RPN is not implemented")
        self.cfg = cfg
        self.train_cfg = train_cfg
        self.anchor_generator = anchor_generator_from_config(cfg.anchor_generator)
        self.bbox_coder = DeltaXYWHBBoxCoder(cfg.bbox_coder)
        self.num_anchors = self.anchor_generator.num_base_anchors
        common = dict(bias_initializer="zeros", dtype=self.dtype_policy)
        self.rpn_conv = keras.layers.Conv2D(cfg.feat_channels, 3, padding="same", activation="relu",
                                            kernel_initializer=_normal_init(), name="rpn_conv", **common)
        self.rpn_cls = keras.layers.Conv2D(self.num_anchors, 1, kernel_initializer=_normal_init(),
                                           name="rpn_cls", **common)
        self.rpn_reg = keras.layers.Conv2D(4 * self.num_anchors, 1, kernel_initializer=_normal_init(),
                                           name="rpn_reg", **common)

    @property
    def train_cfg(self):
        return self._train_cfg

    @train_cfg.setter
    def train_cfg(self, train_cfg):
        """The training settings, and the assigner and sampler built from them (None for a model that predicts)."""
        self._train_cfg = train_cfg
        self.assigner = None if train_cfg is None else MaxIoUAssigner(train_cfg.assigner)
        self.sampler = None if train_cfg is None else RandomSampler(train_cfg.sampler)

    def build(self, input_shape=None):
        """Creates the weights for `cfg.in_channels` input channels (`input_shape`, if given, is checked)."""
        for shape in (input_shape or []):
            if shape[-1] is not None and shape[-1] != self.cfg.in_channels:
                raise ValueError(f"RPNHead: a feature map has {shape[-1]} channels, "
                                 f"rpn_head.in_channels is {self.cfg.in_channels}")
        self.rpn_conv.build((None, None, None, self.cfg.in_channels))
        self.rpn_cls.build((None, None, None, self.cfg.feat_channels))
        self.rpn_reg.build((None, None, None, self.cfg.feat_channels))
        self.built = True

    def call(self, features):
        """Objectness logits and box deltas for every anchor of every level.

        Args:
          features: list over levels (P2..P6) of [B, H_l, W_l, in_channels].
        Returns:
          logits: list of float32 [B, H_l * W_l * A];
          deltas: list of float32 [B, H_l * W_l * A, 4] as (dx, dy, dw, dh), normalized by the box coder's
            means/stds; both in the anchors' order (locations row-major, then base anchors).
        """
        logits, deltas = [], []
        for x in features:
            x = self.rpn_conv(x)
            # Losses and decoding run in float32 whatever the compute dtype.
            cls = tf.cast(self.rpn_cls(x), tf.float32)
            reg = tf.cast(self.rpn_reg(x), tf.float32)
            logits.append(_flatten_anchors(cls, 1, self.num_anchors)[..., 0])
            deltas.append(_flatten_anchors(reg, 4, self.num_anchors))
        return logits, deltas

    def anchors(self, image_shape, features):
        """Anchors of every level for the padded input.

        Args:
          image_shape: (h, w) of the padded network input: ints, or int32 scalars when not static.
          features: the feature maps [B, H_l, W_l, ...]; static H_l, W_l (and image_shape) make the anchors graph
            constants, dynamic ones (inference on any size) compute them in the graph.
        Returns:
          list of float32 [H_l * W_l * A, 4] in padded-input pixels, in the order of `call`'s outputs.
        """
        return self.anchor_generator(tuple(image_shape), [spatial_size(f) for f in features])

    def loss_terms(self, logits, deltas, anchors, gt_boxes, gt_classes, ignore_boxes, image_size, seed):
        """RPN training losses as (sum, count) pairs.

        Args:
          logits, deltas: `call`'s outputs (lists over levels).
          anchors: `anchors`' output, list of [N_l, 4] in padded-input pixels.
          gt_boxes: float32 [B, M, 4] in padded-input pixels; gt_classes: int32 [B, M], 0 for padding.
          ignore_boxes: float32 [B, K, 4] ignore regions (all-zero rows are padding), or None; used when
            train_cfg.assigner.ignore_iof_thr > 0.
          image_size: int32 [B, 2], each image's true (h, w); used by allowed_border >= 0.
          seed: int32 [2] or per-image [B, 2], the stateless seed of the sampler.
        Returns:
          {"rpn_cls": (sum, count), "rpn_bbox": (sum, count)}: float32 scalars, sums already multiplied by
          their loss_weight, both counts the number of sampled anchors in the batch (MMDetection's avg_factor).
        """
        tcfg = self.train_cfg
        if tcfg is None:
            raise ValueError("RPNHead.loss_terms needs a train_cfg")
        logits = tf.concat([tf.cast(t, tf.float32) for t in logits], axis=1)  # [B, N]
        deltas = tf.concat([tf.cast(t, tf.float32) for t in deltas], axis=1)  # [B, N, 4]
        anchors = tf.concat(anchors, axis=0)  # [N, 4]
        gt_boxes = tf.cast(gt_boxes, tf.float32)
        inside = anchor_inside_flags(anchors, image_size, tcfg.allowed_border) if tcfg.allowed_border >= 0 else None
        sample = self.sampler.sample(self.assigner, anchors, gt_boxes, gt_classes > 0, seed, inside, ignore_boxes)
        positive = sample.positive
        valid_f, positive_f = tf.cast(sample.valid, tf.float32), tf.cast(positive, tf.float32)
        count = tf.reduce_sum(valid_f)

        bce = tf.nn.sigmoid_cross_entropy_with_logits(positive_f, tf.gather(logits, sample.indices, batch_dims=1))
        pos_weight = tcfg.pos_weight if tcfg.pos_weight > 0 else 1.0
        cls_weight = valid_f * tf.where(positive, pos_weight, 1.0)
        cls_sum = tf.reduce_sum(bce * cls_weight) * self.cfg.loss_cls.loss_weight

        matched_gt = tf.gather(gt_boxes, sample.matched, batch_dims=1)
        # Non-positive slots may match a padding gt (a zero box, log 0): their target is the anchor itself,
        # so that no inf or NaN enters the (masked) loss or its gradient.
        matched_gt = tf.where(positive[..., None], matched_gt, sample.boxes)
        targets = tf.stop_gradient(self.bbox_coder.encode(matched_gt, sample.boxes))
        bbox = bbox_loss(tf.gather(deltas, sample.indices, batch_dims=1), targets, self.cfg.loss_bbox)
        bbox_sum = tf.reduce_sum(bbox * positive_f[..., None]) * self.cfg.loss_bbox.loss_weight
        return {"rpn_cls": (cls_sum, count), "rpn_bbox": (bbox_sum, count)}

    def get_proposals(self, logits, deltas, anchors, image_size, cfg):
        """Proposals: top-k per level, decode, clip, drop small boxes, NMS per level, top-k.

        Args:
          logits, deltas: `call`'s outputs; anchors: `anchors`' output (lists over levels).
          image_size: int32 [B, 2], each image's true (h, w); proposals are clipped to it.
          cfg: `ProposalCfg` (train_cfg.rpn_proposal or test_cfg.rpn).
        Returns:
          proposals: float32 [B, cfg.max_per_img, 4] in padded-input pixels;
          scores: float32 [B, cfg.max_per_img] objectness probabilities;
          valid: bool [B, cfg.max_per_img]. Sorted by score, padding last; no gradient flows through them.
        """
        boxes, scores, keep = [], [], []
        for level_logits, level_deltas, level_anchors in zip(logits, deltas, anchors):
            level_logits = tf.stop_gradient(tf.cast(level_logits, tf.float32))
            level_deltas = tf.stop_gradient(tf.cast(level_deltas, tf.float32))
            n = level_logits.shape[1]
            if n is None:  # inference on an image size unknown at trace time
                n = tf.shape(level_logits)[1]
            k = n if cfg.nms_pre <= 0 else tf.minimum(cfg.nms_pre, n) if tf.is_tensor(n) else min(cfg.nms_pre, n)
            # The sigmoid is monotonic: ranking logits ranks scores.
            top_logits, top = tf.math.top_k(level_logits, k=k)
            level_boxes = self.bbox_coder.decode(tf.gather(level_deltas, top, batch_dims=1),
                                                 tf.gather(level_anchors, top))
            level_boxes = clip_boxes(level_boxes, image_size)
            y1, x1, y2, x2 = tf.unstack(level_boxes, 4, axis=-1)
            boxes.append(level_boxes)
            scores.append(tf.sigmoid(top_logits))
            keep.append((x2 - x1 > cfg.min_bbox_size) & (y2 - y1 > cfg.min_bbox_size))
        proposals, proposal_scores, valid = multilevel_proposals(
            boxes, scores, cfg.nms_thr, cfg.max_per_img, cfg.nms_across_levels, keep)
        return tuple(tf.stop_gradient(t) for t in (proposals, proposal_scores, valid))
