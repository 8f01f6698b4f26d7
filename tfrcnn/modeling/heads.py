"""The two heads of the R-CNN stage, each with its loss and its decoding (MMDetection's `loss_and_target` and
`predict_by_feat`): Shared2FCBBoxHead (classes and boxes) and FCNMaskHead (masks). `tfrcnn.modeling.roi_heads`'s
StandardRoIHead feeds them RoI features and gathers their loss terms and predictions.

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

Boxes (RoIs, gt, detections) are [y1, x1, y2, x2] in padded-network-input pixels.
"""
import keras
import tensorflow as tf

from tfrcnn.config import BBoxHeadCfg, MaskHeadCfg
from tfrcnn.modeling.layers import ConfiguredLayer
from tfrcnn.modeling.losses import bbox_loss
from tfrcnn.ops.boxes import DeltaXYWHBBoxCoder, clip_boxes
from tfrcnn.ops.masks import mask_targets
from tfrcnn.ops.nms import multiclass_nms


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


def class_slice(x, labels, axis):
    """Per RoI, the entry of class `labels` (int [B, N] in 1..C; 0 reads class 1) along x's class axis.

    x: [B, N, ..., C, ...] with C at `axis` → [B, N, ...] without it. A class-agnostic x (C = 1) gives its only
    entry to every class.
    """
    if x.shape[axis] == 1:
        return tf.squeeze(x, axis)
    index = tf.maximum(tf.cast(labels, tf.int32) - 1, 0)
    return tf.gather(x, index, axis=axis, batch_dims=2)


class Shared2FCBBoxHead(ConfiguredLayer):
    """MMDetection's Shared2FCBBoxHead (torchvision's TwoMLPHead + FastRCNNPredictor).

    Args:
      cfg: `BBoxHeadCfg` (model.roi_head.bbox_head).
    Call:
      [B, N, S, S, in_channels] RoI features (S = roi_feat_size) → (cls_logits float32 [B, N, num_classes + 1]
      with background at index 0, deltas float32 [B, N, num_classes or 1, 4] as (dx, dy, dw, dh) normalized by
      the box coder's means/stds; axis 2 is class c + 1, or shared by all classes with reg_class_agnostic).
    """
    SECTIONS = {"cfg": BBoxHeadCfg}

    def __init__(self, cfg: BBoxHeadCfg, name="bbox_head", **kwargs):
        super().__init__(name=name, **kwargs)
        self.cfg = cfg
        self.num_reg_classes = 1 if cfg.reg_class_agnostic else cfg.num_classes
        self.bbox_coder = DeltaXYWHBBoxCoder(cfg.bbox_coder)
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

    # ------------------------------------------------------------------------------------------------ training

    def loss_terms(self, cls_logits, deltas, rois, labels, matched_gt, valid, positive, pos_weight=-1.0):
        """Classification and box regression losses of the sampled RoIs as (sum, count) pairs.

        Args:
          cls_logits, deltas: this head's outputs for the RoIs [B, S, ...].
          rois: [B, S, 4] the sampled RoIs; labels: int32 [B, S], each RoI's class (0 = background);
          matched_gt: [B, S, 4] each RoI's gt box (meaningful where positive); valid, positive: bool [B, S].
          pos_weight: train_cfg.rcnn.pos_weight, the positives' classification weight (<= 0: 1).
        Returns:
          {"rcnn_cls": (sum, count), "rcnn_bbox": (sum, count)}: float32 scalars, sums multiplied by their
          loss_weight, counts the sampled RoIs (MMDetection's avg_factor).
        """
        num_valid = tf.reduce_sum(tf.cast(valid, tf.float32))
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=cls_logits)
        weight = tf.cast(valid, tf.float32)
        if pos_weight > 0:
            weight = tf.where(positive, pos_weight, weight)
        terms = {"rcnn_cls": (self.cfg.loss_cls.loss_weight * tf.reduce_sum(ce * weight), num_valid)}
        targets = self.bbox_coder.encode(matched_gt, rois)
        # Non-positive slots (padding, zero-size boxes) may encode to inf/NaN; they carry no loss.
        targets = tf.where(positive[..., None] & tf.math.is_finite(targets), targets, 0.0)
        box_loss = bbox_loss(class_slice(deltas, labels, axis=2), targets, self.cfg.loss_bbox)
        box_loss = tf.where(positive[..., None], box_loss, 0.0)
        terms["rcnn_bbox"] = (self.cfg.loss_bbox.loss_weight * tf.reduce_sum(box_loss), num_valid)
        return terms

    # ------------------------------------------------------------------------------------------------ inference

    def predict(self, cls_logits, deltas, proposals, proposals_valid, image_size, test_cfg):
        """This head's outputs on the proposals → detections: softmax, per-class decode, clip, min-size filter,
        score threshold, per-class NMS, top max_per_img.

        Args:
          cls_logits, deltas: this head's outputs for the proposals [B, N, ...].
          proposals: [B, N, 4] in padded-input pixels; proposals_valid: bool [B, N].
          image_size: int32 [B, 2], each image's true (h, w) in the padded input; boxes are clipped to it.
          test_cfg: `RCNNTestCfg` (test_cfg.rcnn): score_thr, nms, max_per_img, min_bbox_size.
        Returns:
          dict: detection_boxes float32 [B, K, 4] (padded-input pixels), detection_scores [B, K],
          detection_classes int32 [B, K] in 1..C (0 = padding), num_detections int32 [B]; K = max_per_img,
          detections sorted by score, padding last.
        """
        scores = tf.nn.softmax(cls_logits, axis=-1)[..., 1:]  # [B, N, C]: background dropped
        boxes = self.bbox_coder.decode(deltas, proposals[:, :, None, :])
        shape = tf.shape(boxes)  # [B, N, C or 1, 4]
        boxes = tf.reshape(clip_boxes(tf.reshape(boxes, [shape[0], -1, 4]), image_size), shape)
        valid = tf.broadcast_to(tf.cast(proposals_valid, tf.bool)[:, :, None], tf.shape(scores))
        if test_cfg.min_bbox_size > 0:  # torchvision's remove_small_boxes(boxes, 1e-2): keeps w, h >= it
            y1, x1, y2, x2 = tf.unstack(boxes, 4, axis=-1)  # [B, N, C or 1]
            large = (x2 - x1 >= test_cfg.min_bbox_size) & (y2 - y1 >= test_cfg.min_bbox_size)
            valid = valid & tf.broadcast_to(large, tf.shape(valid))
        scores = tf.where(valid, scores, 0.0)
        return multiclass_nms(boxes, scores, test_cfg.score_thr, test_cfg.nms.iou_threshold, test_cfg.max_per_img,
                              valid)


class FCNMaskHead(ConfiguredLayer):
    """MMDetection's FCNMaskHead (torchvision's MaskRCNNHeads + MaskRCNNPredictor).

    Args:
      cfg: `MaskHeadCfg` (model.roi_head.mask_head).
    Call:
      [B, N, S, S, in_channels] RoI features (S = 14) → float32 logits [B, N, 2S, 2S, num_classes]; channel c is
      class c + 1 (there is no background channel).
    """
    SECTIONS = {"cfg": MaskHeadCfg}

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

    def loss_terms(self, logits, labels, gt_masks, gt_mask_boxes, rois, gt_index, weights, train_cfg):
        """Per-pixel BCE of each RoI's class channel against its target, read from its gt mask (`mask_targets`).

        Args:
          logits: this head's outputs [B, P, 2S, 2S, C] for P RoIs per image (a flat list of RoIs is B = 1).
          labels: int32 [B, P], each RoI's class; rois: [B, P, 4] in padded-input pixels.
          gt_masks: [B, M, h, w] in [0, 1], mask m covering gt_mask_boxes[:, m] ([B, M, 4], padded-input pixels);
          gt_index: int32 [B, P], each RoI's gt among the M; weights: float32 [B, P], 1 for a positive RoI, 0 for
            padding.
          train_cfg: `RCNNTrainCfg` (train_cfg.rcnn): mask_size and mask_target.
        Returns:
          {"mask": (sum, count)}: the sum multiplied by loss_weight, the count the positives × mask_size².
        """
        size, t = train_cfg.mask_size, train_cfg.mask_target
        targets = mask_targets(gt_masks, gt_mask_boxes, rois, gt_index, size, binarize=t.binarize, aligned=t.aligned,
                               sampling_ratio=t.sampling_ratio)
        bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=class_slice(logits, labels, axis=4))
        count = tf.reduce_sum(weights) * float(size * size)
        return {"mask": (self.cfg.loss_mask.loss_weight * tf.reduce_sum(bce * weights[:, :, None, None]), count)}

    def predict(self, logits, classes):
        """This head's outputs [B, K, 2S, 2S, C] for boxes of classes int32 [B, K] (1..C, 0 = none) → float32
        [B, K, 2S, 2S] probabilities of each box's class over the box; 0 where the class is 0."""
        return tf.where((classes > 0)[:, :, None, None], tf.sigmoid(class_slice(logits, classes, axis=4)), 0.0)
