"""StandardRoIHead: RoI feature extraction, the box head and the mask head.

Training samples RoIs from the proposals (MaxIoUAssigner + RandomSampler, gt added as proposals), pools
7×7 features for them from P2..P5 (SingleRoIExtractor), classifies and refines them (Shared2FCBBoxHead) and,
for Mask R-CNN, predicts a 28×28 mask for the positive ones from 14×14 features (FCNMaskHead). Testing
decodes every proposal's class-specific box, keeps score > score_thr, runs NMS per class, keeps
max_per_img, then predicts the masks of the final boxes.

Layer and weight names (Keras variables are `roi_head/<head>/<sublayer>/{kernel,bias}`):

  sublayer                   torchvision state_dict key                      MMDetection key
  bbox_head/shared_fcs_0     roi_heads.box_head.fc6                          roi_head.bbox_head.shared_fcs.0
  bbox_head/shared_fcs_1     roi_heads.box_head.fc7                          roi_head.bbox_head.shared_fcs.1
  bbox_head/fc_cls           roi_heads.box_predictor.cls_score               roi_head.bbox_head.fc_cls
  bbox_head/fc_reg           roi_heads.box_predictor.bbox_pred               roi_head.bbox_head.fc_reg
  mask_head/convs_{i}        roi_heads.mask_head.{i}.0 (legacy mask_fcn{i+1}) roi_head.mask_head.convs.{i}.conv
  mask_head/upsample         roi_heads.mask_predictor.conv5_mask             roi_head.mask_head.upsample
  mask_head/conv_logits      roi_heads.mask_predictor.mask_fcn_logits        roi_head.mask_head.conv_logits

Layouts, for a converter: a Linear weight (O, I) is the Dense kernel (I, O), but shared_fcs_0 flattens its RoI
features NHWC (row-major over S, S, C) where torchvision and MMDetection flatten NCHW, so fc6's input rows are
permuted: kernel[(y * S + x) * C + c] = weight[:, c * S * S + y * S + x]. fc_cls has background at index 0, as
torchvision (MMDetection puts it last). fc_reg's output c * 4 + j is delta j (dx, dy, dw, dh) of class c + 1:
torchvision's bbox_pred holds a background block first (drop rows 0..3). conv_logits' channel c is class c + 1:
torchvision's mask_fcn_logits holds a background channel first (drop it). A Conv weight (O, I, kh, kw) is the
kernel (kh, kw, I, O); a ConvTranspose weight (I, O, kh, kw) is the Conv2DTranspose kernel (kh, kw, O, I).

Boxes (proposals, gt, RoIs, detections) are [y1, x1, y2, x2] in padded-network-input pixels.
"""
import math

import keras
import tensorflow as tf

from tfrcnn.config import (BBoxHeadCfg, MaskHeadCfg, RCNNTestCfg, RCNNTrainCfg, RoIExtractorCfg,
                           RoIHeadCfg)
from tfrcnn.modeling.losses import bbox_loss
from tfrcnn.ops.assign import max_iou_assign
from tfrcnn.ops.boxes import clip_boxes, decode_boxes, encode_boxes
from tfrcnn.ops.masks import mask_targets
from tfrcnn.ops.nms import multiclass_nms
from tfrcnn.ops.roi_align import multilevel_roi_align, multilevel_roi_pool, stack_pyramid
from tfrcnn.ops.sample import add_gt_as_proposals, assign_gt_proposals_to_themselves, random_sample


def _kaiming_fan_out():
    """PyTorch's kaiming_normal_(mode="fan_out", nonlinearity="relu"): untruncated N(0, 2 / fan_out).

    Keras computes fan_out of a Conv2DTranspose kernel (kh, kw, O, I) as kh * kw * I, the same number
    PyTorch computes from its (I, O, kh, kw) weight.
    """
    return keras.initializers.VarianceScaling(2.0, mode="fan_out", distribution="untruncated_normal")


def _torch_bias(fan_in):
    """PyTorch's default bias of nn.Linear and nn.Conv2d: U(+-1 / sqrt(fan_in))."""
    bound = 1.0 / fan_in ** 0.5
    return keras.initializers.RandomUniform(-bound, bound)


def _torch_linear(fan_in):
    """(kernel, bias) initializers of PyTorch's nn.Linear: kaiming_uniform_(a=sqrt(5)) is U(+-1 / sqrt(fan_in))
    for the weight (VarianceScaling 1/3, fan_in, uniform: bound sqrt(3 * 1/3 / fan_in)), and the bias the same."""
    return (keras.initializers.VarianceScaling(1.0 / 3.0, mode="fan_in", distribution="uniform"),
            _torch_bias(fan_in))


def _class_slice(x, labels, axis):
    """Per RoI, the entry of class `labels` (int [B, N] in 1..C; 0 reads class 1) along x's class axis.

    x: [B, N, ..., C, ...] with C at `axis` → [B, N, ...] without it. A class-agnostic x (C = 1) gives its only
    entry to every class.
    """
    if x.shape[axis] == 1:
        return tf.squeeze(x, axis)
    index = tf.maximum(tf.cast(labels, tf.int32) - 1, 0)
    return tf.gather(x, index, axis=axis, batch_dims=2)


class Shared2FCBBoxHead(keras.layers.Layer):
    """MMDetection's Shared2FCBBoxHead (torchvision's TwoMLPHead + FastRCNNPredictor).

    Args:
      cfg: `BBoxHeadCfg` (model.roi_head.bbox_head).
    Call:
      [B, N, S, S, in_channels] RoI features (S = roi_feat_size) → (cls_logits float32 [B, N, num_classes + 1]
      with background at index 0, deltas float32 [B, N, num_classes or 1, 4] as (dx, dy, dw, dh) normalized by
      the box coder's means/stds; axis 2 is class c + 1, or shared by all classes with reg_class_agnostic).
    """

    def __init__(self, cfg: BBoxHeadCfg, name="bbox_head", **kwargs):
        super().__init__(name=name, **kwargs)
        self.cfg = cfg
        self.num_reg_classes = 1 if cfg.reg_class_agnostic else cfg.num_classes
        if cfg.init == "torchvision":
            fan_ins = [self.in_features, cfg.fc_out_channels, cfg.fc_out_channels, cfg.fc_out_channels]
            inits = [_torch_linear(n) for n in fan_ins]
        else:
            normal = keras.initializers.RandomNormal
            inits = [("glorot_uniform", "zeros")] * 2 + [(normal(stddev=0.01), "zeros"), (normal(stddev=0.001), "zeros")]
        fc = dict(activation="relu", dtype=self.dtype_policy)
        self.shared_fcs = [keras.layers.Dense(cfg.fc_out_channels, name=f"shared_fcs_{i}", kernel_initializer=k,
                                              bias_initializer=b, **fc) for i, (k, b) in enumerate(inits[:2])]
        self.fc_cls = keras.layers.Dense(cfg.num_classes + 1, kernel_initializer=inits[2][0],
                                         bias_initializer=inits[2][1], name="fc_cls", dtype=self.dtype_policy)
        self.fc_reg = keras.layers.Dense(4 * self.num_reg_classes, kernel_initializer=inits[3][0],
                                         bias_initializer=inits[3][1], name="fc_reg", dtype=self.dtype_policy)

    @property
    def in_features(self):
        return self.cfg.roi_feat_size ** 2 * self.cfg.in_channels

    def build(self, input_shape=None):
        """Creates the weights from the config (`input_shape`, if given, must match it)."""
        s, c = self.cfg.roi_feat_size, self.cfg.in_channels
        if input_shape is not None and tuple(input_shape[-3:]) != (s, s, c):
            raise ValueError(f"Shared2FCBBoxHead: RoI features {tuple(input_shape)}, expected [B, N, {s}, {s}, {c}]")
        width = self.in_features
        for fc in self.shared_fcs:
            fc.build((None, None, width))
            width = self.cfg.fc_out_channels
        self.fc_cls.build((None, None, width))
        self.fc_reg.build((None, None, width))
        self.built = True

    def call(self, roi_features):
        shape = tf.shape(roi_features)
        x = tf.reshape(roi_features, tf.stack([shape[0], shape[1], self.in_features]))
        for fc in self.shared_fcs:
            x = fc(x)
        cls_logits = tf.cast(self.fc_cls(x), tf.float32)
        deltas = tf.cast(self.fc_reg(x), tf.float32)
        deltas = tf.reshape(deltas, tf.stack([shape[0], shape[1], self.num_reg_classes, 4]))
        return cls_logits, deltas

    def get_config(self):
        return {**super().get_config(), "cfg": self.cfg.to_dict()}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        return cls(BBoxHeadCfg.from_dict(config.pop("cfg")), **config)


class FCNMaskHead(keras.layers.Layer):
    """MMDetection's FCNMaskHead (torchvision's MaskRCNNHeads + MaskRCNNPredictor).

    Args:
      cfg: `MaskHeadCfg` (model.roi_head.mask_head).
    Call:
      [B, N, S, S, in_channels] RoI features (S = 14) → float32 logits [B, N, 2S, 2S, num_classes]; channel c is
      class c + 1 (there is no background channel).
    """

    def __init__(self, cfg: MaskHeadCfg, name="mask_head", **kwargs):
        super().__init__(name=name, **kwargs)
        self.cfg = cfg
        common = dict(kernel_initializer=_kaiming_fan_out(), dtype=self.dtype_policy)
        self.convs = [keras.layers.Conv2D(cfg.conv_out_channels, 3, padding="same", activation="relu",
                                          bias_initializer="zeros", name=f"convs_{i}", **common)
                      for i in range(cfg.num_convs)]
        # torchvision's MaskRCNNPredictor re-initializes only its weights: the biases keep PyTorch's conv default,
        # U(+-1 / sqrt(fan_in)), with fan_in = out_channels * 2 * 2 for the transposed conv's (I, O, 2, 2) weight.
        torch_bias = cfg.init == "torchvision"
        self.upsample = keras.layers.Conv2DTranspose(
            cfg.conv_out_channels, 2, strides=2, activation="relu", name="upsample",
            bias_initializer=_torch_bias(cfg.conv_out_channels * 4) if torch_bias else "zeros", **common)
        self.conv_logits = keras.layers.Conv2D(
            cfg.num_classes, 1, name="conv_logits",
            bias_initializer=_torch_bias(cfg.conv_out_channels) if torch_bias else "zeros", **common)

    def build(self, input_shape=None):
        """Creates the weights from the config (`input_shape`'s channels, if given, must match it)."""
        if input_shape is not None and input_shape[-1] not in (None, self.cfg.in_channels):
            raise ValueError(f"FCNMaskHead: RoI features {tuple(input_shape)} have {input_shape[-1]} channels, "
                             f"mask_head.in_channels is {self.cfg.in_channels}")
        channels = self.cfg.in_channels
        for conv in self.convs:
            conv.build((None, None, None, channels))
            channels = self.cfg.conv_out_channels
        self.upsample.build((None, None, None, channels))
        self.conv_logits.build((None, None, None, self.cfg.conv_out_channels))
        self.built = True

    def call(self, roi_features):
        shape = tf.shape(roi_features)
        x = tf.reshape(roi_features, tf.concat([[-1], shape[2:]], axis=0))  # RoIs as a batch of images
        for conv in self.convs:
            x = conv(x)
        logits = tf.cast(self.conv_logits(self.upsample(x)), tf.float32)
        out_shape = tf.concat([shape[:2], tf.shape(logits)[1:]], axis=0)
        size = None if roi_features.shape[2] is None else 2 * roi_features.shape[2]
        return tf.ensure_shape(tf.reshape(logits, out_shape),
                               [roi_features.shape[0], roi_features.shape[1], size, size, self.cfg.num_classes])

    def get_config(self):
        return {**super().get_config(), "cfg": self.cfg.to_dict()}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        return cls(MaskHeadCfg.from_dict(config.pop("cfg")), **config)


class StandardRoIHead(keras.layers.Layer):
    """MMDetection's StandardRoIHead: box branch and, when `cfg.mask_head` is set, mask branch.

    Args:
      cfg: `RoIHeadCfg` (model.roi_head): extractors and heads.
      train_cfg: `RCNNTrainCfg` (train_cfg.rcnn): assigner, sampler, mask_size, pos_weight; None: the defaults.
      test_cfg: `RCNNTestCfg` (test_cfg.rcnn): score_thr, nms, max_per_img; None: the defaults.
    The methods are `extract`, `losses` (training) and `predict` (inference). There is no `call`: Keras'
    `__call__` would cast every float argument, boxes included, to the compute dtype (bfloat16 under
    mixed precision), while boxes must stay float32.
    """

    def __init__(self, cfg: RoIHeadCfg, train_cfg: RCNNTrainCfg = None, test_cfg: RCNNTestCfg = None,
                 name="roi_head", **kwargs):
        super().__init__(name=name, **kwargs)
        self.cfg = cfg
        self.train_cfg = train_cfg if train_cfg is not None else RCNNTrainCfg()
        self.test_cfg = test_cfg if test_cfg is not None else RCNNTestCfg()
        self.with_mask = cfg.mask_head is not None
        if self.with_mask and cfg.mask_roi_extractor is None:
            raise ValueError("StandardRoIHead: a mask_head needs a mask_roi_extractor")
        self.bbox_head = Shared2FCBBoxHead(cfg.bbox_head, dtype=self.dtype_policy)
        self.mask_head = FCNMaskHead(cfg.mask_head, dtype=self.dtype_policy) if self.with_mask else None
        if self.with_mask:
            out = 2 * cfg.mask_roi_extractor.roi_layer.output_size
            if out != self.train_cfg.mask_size:
                raise ValueError(f"StandardRoIHead: the mask head predicts {out}×{out} masks "
                                 f"(2 × mask_roi_extractor.roi_layer.output_size) but train_cfg.rcnn.mask_size "
                                 f"is {self.train_cfg.mask_size}")

    def build(self, input_shape=None):
        """Creates the heads' weights from the config (input shapes are not needed)."""
        s = self.cfg.bbox_head.roi_feat_size
        self.bbox_head.build((None, None, s, s, self.cfg.bbox_head.in_channels))
        if self.with_mask:
            s = self.cfg.mask_roi_extractor.roi_layer.output_size
            self.mask_head.build((None, None, s, s, self.cfg.mask_head.in_channels))
        self.built = True

    def _ensure_built(self):
        if not self.built:
            self.build()

    # ------------------------------------------------------------------------------------------------ features

    def shared_pyramid(self, features):
        """The RoIAlign canvas of the maps both extractors read (`stack_pyramid`), or None when they differ (a
        Faster R-CNN, RoIPool, other strides): built once per forward pass instead of once per extractor."""
        box, mask = self.cfg.bbox_roi_extractor, self.cfg.mask_roi_extractor
        if not self.with_mask or "RoIPool" in (box.roi_layer.type, mask.roi_layer.type) or \
                tuple(box.featmap_strides) != tuple(mask.featmap_strides):
            return None
        return stack_pyramid([tf.cast(f, tf.float32) for f in features[:len(box.featmap_strides)]])

    def extract(self, features, rois, extractor_cfg: RoIExtractorCfg, pyramid=None, image_indices=None):
        """SingleRoIExtractor: each RoI pooled from the FPN level its size maps to.

        Args:
          features: list of [B, H_l, W_l, C] maps, finest first (P2..P6); the first
            len(extractor_cfg.featmap_strides) are used.
          rois: [B, N, 4] in padded-input pixels, or [N, 4] with `image_indices` (RoIAlign only).
          extractor_cfg: `RoIExtractorCfg` (bbox_roi_extractor or mask_roi_extractor).
          pyramid: `shared_pyramid(features)`, or None.
          image_indices: int32 [N], the image of each of the flat `rois`.
        Returns:
          [B, N, S, S, C] (or [N, S, S, C]) in the layer's compute dtype; no gradient flows to `rois`.
        """
        strides = tuple(extractor_cfg.featmap_strides)
        if len(features) < len(strides):
            raise ValueError(f"StandardRoIHead.extract: {len(features)} feature maps for strides {strides}")
        # The ops run in float32 whatever the policy: bilinear weights and box arithmetic need the precision.
        levels = [tf.cast(f, tf.float32) for f in features[:len(strides)]]
        rois = tf.stop_gradient(tf.cast(rois, tf.float32))
        layer = extractor_cfg.roi_layer
        if layer.type == "RoIAlign":
            pooled = multilevel_roi_align(levels, rois, layer.output_size, layer.sampling_ratio, layer.aligned,
                                          strides, extractor_cfg.finest_scale, pyramid=pyramid,
                                          image_indices=image_indices)
        elif image_indices is not None:
            raise ValueError("StandardRoIHead.extract: flat RoIs (image_indices) need RoIAlign")
        else:
            pooled = multilevel_roi_pool(levels, rois, layer.output_size, strides, extractor_cfg.finest_scale)
        return tf.cast(pooled, self.compute_dtype)

    # ------------------------------------------------------------------------------------------------ training

    def _sample(self, proposals, proposals_valid, gt_boxes, gt_valid, ignore_boxes, seed):
        """Assigner + sampler: rois [B, S, 4], valid/positive bool [B, S], matched gt index int32 [B, S]."""
        cfg = self.train_cfg
        boxes, boxes_valid = proposals, tf.cast(proposals_valid, tf.bool)
        if cfg.sampler.add_gt_as_proposals:
            boxes, boxes_valid = add_gt_as_proposals(boxes, boxes_valid, gt_boxes, gt_valid)
        a = cfg.assigner
        ignore_valid = None
        if ignore_boxes is not None:
            ignore_boxes = tf.cast(ignore_boxes, tf.float32)
            ignore_valid = tf.reduce_any(ignore_boxes != 0.0, axis=-1)
        gt_inds, _, matched = max_iou_assign(
            boxes, gt_boxes, gt_valid, a.pos_iou_thr, a.neg_iou_thr, a.min_pos_iou, a.match_low_quality,
            a.gt_max_assign_all, ignore_boxes, ignore_valid, a.ignore_iof_thr, a.ignore_wrt_candidates,
            boxes_valid=boxes_valid, low_quality_gt=a.low_quality_gt)
        if cfg.sampler.add_gt_as_proposals:
            gt_inds, matched = assign_gt_proposals_to_themselves(gt_inds, matched, gt_valid)
        s = cfg.sampler
        indices, valid, positive = random_sample(gt_inds, s.num, s.pos_fraction, seed, s.neg_pos_ub)
        rois = tf.gather(boxes, indices, batch_dims=1)
        matched = tf.gather(matched, indices, batch_dims=1)
        return rois, valid, positive, matched

    def losses(self, features, proposals, proposals_valid, gt_boxes, gt_classes, gt_masks, ignore_boxes, seed,
               gt_mask_boxes=None):
        """R-CNN training losses as (sum, count) pairs.

        Note: this replaces Keras' `Layer.losses` property (the add_loss list) on this layer; a model's
        `losses` still works, since Keras collects sublayers' add_loss terms without this name.

        Args:
          features: list of [B, H_l, W_l, C] FPN maps, finest first (P2..P6 or P2..P5).
          proposals: [B, N, 4] RPN proposals in padded-input pixels; proposals_valid: bool [B, N].
          gt_boxes: float32 [B, M, 4] in padded-input pixels; gt_classes: int32 [B, M] in 1..C, 0 = padding.
          gt_masks: [B, M, h, w] in [0, 1], mask m covering gt_mask_boxes[m]; None without a mask head.
          ignore_boxes: [B, K, 4] ignore regions (all-zero rows are padding), or None; used when the assigner's
            ignore_iof_thr > 0.
          seed: int32 [2], the stateless seed of the sampler.
          gt_mask_boxes: [B, M, 4] the frame each gt mask covers, in padded-input pixels ([0, 0, H, W] for
            full-image masks), or None: each mask is cropped to its gt box (what the data pipeline gives).
        Returns:
          {"rcnn_cls": (sum, count), "rcnn_bbox": (sum, count)} plus "mask" with a mask head: float32 scalars,
          sums already multiplied by their loss_weight; counts are MMDetection's avg_factors (sampled RoIs for
          both box losses, positive RoIs × mask_size² for the mask). No gradient reaches the proposals or gt.
        """
        self._ensure_built()
        # Proposals and gt are inputs here, as in MMDetection: the RoIs and the targets carry no gradient.
        proposals = tf.stop_gradient(tf.cast(proposals, tf.float32))
        gt_boxes = tf.stop_gradient(tf.cast(gt_boxes, tf.float32))
        gt_classes = tf.cast(gt_classes, tf.int32)
        gt_mask_boxes = gt_boxes if gt_mask_boxes is None else tf.cast(gt_mask_boxes, tf.float32)
        if gt_boxes.shape[1] == 0:  # one padding gt keeps the gathers below on a non-empty axis
            gt_boxes = tf.pad(gt_boxes, [[0, 0], [0, 1], [0, 0]])
            gt_mask_boxes = tf.pad(gt_mask_boxes, [[0, 0], [0, 1], [0, 0]])
            gt_classes = tf.pad(gt_classes, [[0, 0], [0, 1]])
            if gt_masks is not None:
                gt_masks = tf.pad(gt_masks, [[0, 0], [0, 1], [0, 0], [0, 0]])
        gt_valid = gt_classes > 0
        rois, valid, positive, matched = self._sample(
            proposals, proposals_valid, gt_boxes, gt_valid, ignore_boxes, seed)
        labels = tf.where(positive, tf.gather(gt_classes, matched, batch_dims=1), 0)
        num_valid = tf.reduce_sum(tf.cast(valid, tf.float32))

        pyramid = self.shared_pyramid(features)
        cls_logits, deltas = self.bbox_head(self.extract(features, rois, self.cfg.bbox_roi_extractor, pyramid))
        head = self.cfg.bbox_head
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=cls_logits)
        weight = tf.cast(valid, tf.float32)
        if self.train_cfg.pos_weight > 0:
            weight = tf.where(positive, self.train_cfg.pos_weight, weight)
        losses = {"rcnn_cls": (head.loss_cls.loss_weight * tf.reduce_sum(ce * weight), num_valid)}

        coder = head.bbox_coder
        matched_gt = tf.gather(gt_boxes, matched, batch_dims=1)
        targets = encode_boxes(matched_gt, rois, coder.target_means, coder.target_stds)
        # Non-positive slots (padding, zero-size boxes) may encode to inf/NaN; they carry no loss.
        targets = tf.where(positive[..., None] & tf.math.is_finite(targets), targets, 0.0)
        box_loss = bbox_loss(_class_slice(deltas, labels, axis=2), targets, head.loss_bbox)
        box_loss = tf.where(positive[..., None], box_loss, 0.0)
        losses["rcnn_bbox"] = (head.loss_bbox.loss_weight * tf.reduce_sum(box_loss), num_valid)

        if self.with_mask:
            if gt_masks is None:
                raise ValueError("StandardRoIHead.losses: a mask head needs gt_masks")
            losses["mask"] = self._mask_loss(features, rois, positive, labels, matched, gt_masks, gt_mask_boxes,
                                             pyramid)
        return losses

    def _mask_loss(self, features, rois, positive, labels, matched, gt_masks, gt_mask_boxes, pyramid=None):
        """Per-pixel BCE of the label's mask channel over the positive RoIs → (sum, count)."""
        size, t = self.train_cfg.mask_size, self.train_cfg.mask_target
        target = dict(binarize=t.binarize, aligned=t.aligned, sampling_ratio=t.sampling_ratio)
        weight = self.cfg.mask_head.loss_mask.loss_weight
        flat = (self.train_cfg.mask_rois == "positives"
                and self.cfg.mask_roi_extractor.roi_layer.type == "RoIAlign")
        if flat:
            # The batch's positives as one list, as torchvision and MMDetection run the mask head: no slot of an
            # image with fewer positives than another costs mask-head work.
            where = tf.cast(tf.where(positive), tf.int32)  # [P, 2]: (image, slot)
            num = tf.shape(where)[0]
            # With no positive at all, one placeholder RoI (weight 0) keeps the mask head off empty tensors,
            # whose convolution gradients TensorFlow's oneDNN kernels cannot compute.
            where = tf.concat([where, tf.zeros([1, 2], tf.int32)], axis=0)[:tf.maximum(num, 1)]
            images = where[:, 0]
            rois, labels, matched = [tf.gather_nd(t, where) for t in (rois, labels, matched)]
            logits = self.mask_head(self.extract(features, rois, self.cfg.mask_roi_extractor, pyramid,
                                                 image_indices=images)[None])[0]  # [P, 28, 28, C]
            logits = _class_slice(logits[None], labels[None], axis=4)[0]  # [P, 28, 28]
            pairs = tf.stack([images, matched], axis=1)
            targets = mask_targets(tf.gather_nd(gt_masks, pairs)[None], tf.gather_nd(gt_mask_boxes, pairs)[None],
                                   rois[None], tf.range(tf.shape(rois)[0])[None], size, **target)[0]
            bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=logits)
            real = tf.cast(tf.range(tf.shape(where)[0]) < num, tf.float32)[:, None, None]
            count = tf.cast(num, tf.float32) * float(size * size)
            return weight * tf.reduce_sum(bce * real), count
        s = self.train_cfg.sampler
        # random_sample puts positives first and takes at most int(num * pos_fraction): these slots hold them all.
        p = min(int(s.num * s.pos_fraction), rois.shape[1])
        if self.train_cfg.mask_rois == "positives":  # RoIPool: the slots past the batch's largest count are empty
            # (at least one slot, masked out when empty: see the placeholder above)
            p = tf.maximum(tf.reduce_max(tf.reduce_sum(tf.cast(positive[:, :p], tf.int32), axis=1)), 1)
        rois, positive, labels, matched = rois[:, :p], positive[:, :p], labels[:, :p], matched[:, :p]
        logits = self.mask_head(self.extract(features, rois, self.cfg.mask_roi_extractor, pyramid))  # [B, P, 28, 28, C]
        logits = _class_slice(logits, labels, axis=4)  # [B, P, 28, 28]
        targets = mask_targets(gt_masks, gt_mask_boxes, rois, matched, size, **target)
        bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=logits)
        bce = tf.where(positive[:, :, None, None], bce, 0.0)
        count = tf.reduce_sum(tf.cast(positive, tf.float32)) * float(size * size)
        return weight * tf.reduce_sum(bce), count

    # ------------------------------------------------------------------------------------------------ inference

    def predict(self, features, proposals, proposals_valid, image_size):
        """Detections.

        Args:
          features: list of [B, H_l, W_l, C] FPN maps, finest first.
          proposals: [B, N, 4] in padded-input pixels; proposals_valid: bool [B, N].
          image_size: int32 [B, 2], each image's true (h, w) in the padded input; boxes are clipped to it.
        Returns:
          dict: detection_boxes float32 [B, K, 4] (padded-input pixels), detection_scores [B, K],
          detection_classes int32 [B, K] in 1..C (0 = padding), num_detections int32 [B], and with a mask head
          detection_masks float32 [B, K, 28, 28], probabilities of the detected class over its box (0 for
          padding). K = test_cfg.max_per_img; detections sorted by score, padding last.
        """
        self._ensure_built()
        proposals = tf.cast(proposals, tf.float32)
        pyramid = self.shared_pyramid(features)
        cls_logits, deltas = self.bbox_head(self.extract(features, proposals, self.cfg.bbox_roi_extractor, pyramid))
        detections = self.detections(cls_logits, deltas, proposals, proposals_valid, image_size)
        if self.with_mask:
            detections["detection_masks"] = self.predict_masks(
                features, detections["detection_boxes"], detections["detection_classes"], pyramid)
        return detections

    def detections(self, cls_logits, deltas, proposals, proposals_valid, image_size):
        """The box head's outputs → final detections: softmax, per-class decode, clip, min-size filter, score
        threshold, per-class NMS, top max_per_img (the dict of `predict` without masks)."""
        scores = tf.nn.softmax(cls_logits, axis=-1)[..., 1:]  # [B, N, C]: background dropped
        coder = self.cfg.bbox_head.bbox_coder
        boxes = decode_boxes(deltas, proposals[:, :, None, :], coder.target_means, coder.target_stds,
                             clamp=coder.delta_clamp, max_ratio=abs(math.log(coder.wh_ratio_clip)))
        shape = tf.shape(boxes)  # [B, N, C or 1, 4]
        boxes = tf.reshape(clip_boxes(tf.reshape(boxes, [shape[0], -1, 4]), image_size), shape)
        valid = tf.broadcast_to(tf.cast(proposals_valid, tf.bool)[:, :, None], tf.shape(scores))
        if self.test_cfg.min_bbox_size > 0:  # torchvision's remove_small_boxes(boxes, 1e-2): keeps w, h >= it
            y1, x1, y2, x2 = tf.unstack(boxes, 4, axis=-1)  # [B, N, C or 1]
            large = (x2 - x1 >= self.test_cfg.min_bbox_size) & (y2 - y1 >= self.test_cfg.min_bbox_size)
            valid = valid & tf.broadcast_to(large, tf.shape(valid))
        scores = tf.where(valid, scores, 0.0)
        t = self.test_cfg
        return multiclass_nms(boxes, scores, t.score_thr, t.nms.iou_threshold, t.max_per_img, valid)

    def predict_masks(self, features, boxes, classes, pyramid=None):
        """Mask probabilities of boxes [B, K, 4] (padded-input pixels) for classes int32 [B, K] (1..C, 0 = none)
        → float32 [B, K, 28, 28] in the boxes' frames; 0 where the class is 0."""
        logits = self.mask_head(self.extract(features, boxes, self.cfg.mask_roi_extractor, pyramid))
        logits = _class_slice(logits, classes, axis=4)
        return tf.where((classes > 0)[:, :, None, None], tf.sigmoid(logits), 0.0)

    def get_config(self):
        return {**super().get_config(), "cfg": self.cfg.to_dict(), "train_cfg": self.train_cfg.to_dict(),
                "test_cfg": self.test_cfg.to_dict()}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        return cls(RoIHeadCfg.from_dict(config.pop("cfg")), RCNNTrainCfg.from_dict(config.pop("train_cfg")),
                   RCNNTestCfg.from_dict(config.pop("test_cfg")), **config)
