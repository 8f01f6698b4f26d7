"""StandardRoIHead: the R-CNN stage, orchestrating RoI feature extraction and the two heads.

Training samples RoIs from the proposals (MaxIoUAssigner + RandomSampler, gt added as proposals), pools 7×7
features for them from P2..P5 (SingleRoIExtractor) for the box head (Shared2FCBBoxHead) and, for Mask R-CNN, 14×14
features of the positive ones for the mask head (FCNMaskHead); each head computes its own loss. Testing runs the
box head on every proposal and decodes its detections (score > score_thr, NMS per class, max_per_img), then
predicts the masks of the final boxes. The heads live in `tfrcnn.modeling.heads`.

Boxes (proposals, gt, RoIs, detections) are [y1, x1, y2, x2] in padded-network-input pixels.
"""
import tensorflow as tf

from tfrcnn.config import RCNNTestCfg, RCNNTrainCfg, RoIHeadCfg
from tfrcnn.modeling.heads import FCNMaskHead, Shared2FCBBoxHead
from tfrcnn.modeling.layers import ConfiguredLayer
from tfrcnn.ops.assign import MaxIoUAssigner
from tfrcnn.ops.roi_align import multilevel_roi_align, multilevel_roi_pool, stack_pyramid
from tfrcnn.ops.sample import RandomSampler


class SingleRoIExtractor:
    """MMDetection's SingleRoIExtractor: each RoI pooled from the FPN level its size maps to.

    Args:
      cfg: `RoIExtractorCfg` (bbox_roi_extractor or mask_roi_extractor).
      dtype: the compute dtype the features are returned in.
    Call (features, rois, pyramid=None, image_indices=None):
      features: list of [B, H_l, W_l, C] maps, finest first (P2..P6); the first len(cfg.featmap_strides) are used.
      rois: [B, N, 4] in padded-input pixels, or [N, 4] with `image_indices` int32 [N], the image of each
        (RoIAlign only).
      pyramid: `StandardRoIHead.shared_pyramid(features)`, or None.
      → [B, N, S, S, C] (or [N, S, S, C]) in `dtype`; no gradient flows to `rois`.
    """

    def __init__(self, cfg, dtype):
        self.cfg, self.roi_layer, self.dtype = cfg, cfg.roi_layer, dtype
        self.strides = tuple(cfg.featmap_strides)

    def __call__(self, features, rois, pyramid=None, image_indices=None):
        if len(features) < len(self.strides):
            raise ValueError(f"SingleRoIExtractor: {len(features)} feature maps for strides {self.strides}")
        # The boxes and the bilinear arithmetic are float32 whatever the policy (crop_and_resize computes in float32
        # and returns float32); the maps are stacked in their own dtype, which saves a float32 copy of each.
        levels = features[:len(self.strides)]
        rois = tf.stop_gradient(tf.cast(rois, tf.float32))
        layer = self.roi_layer
        if layer.type == "RoIAlign":
            pooled = multilevel_roi_align(levels, rois, layer.output_size, layer.sampling_ratio, layer.aligned,
                                          self.strides, self.cfg.finest_scale, pyramid=pyramid,
                                          image_indices=image_indices)
        elif image_indices is not None:
            raise ValueError("SingleRoIExtractor: flat RoIs (image_indices) need RoIAlign")
        else:
            pooled = multilevel_roi_pool(levels, rois, layer.output_size, self.strides, self.cfg.finest_scale)
        return tf.cast(pooled, self.dtype)


class StandardRoIHead(ConfiguredLayer):
    """MMDetection's StandardRoIHead: box branch and, when `cfg.mask_head` is set, mask branch.

    Args:
      cfg: `RoIHeadCfg` (model.roi_head): extractors and heads.
      train_cfg: `RCNNTrainCfg` (train_cfg.rcnn): assigner, sampler, mask_size, pos_weight; None: the defaults.
      test_cfg: `RCNNTestCfg` (test_cfg.rcnn): score_thr, nms, max_per_img; None: the defaults.
    The methods are `loss_terms` (training) and `predict` (inference), and the stages they are made of:
    `shared_pyramid`, the extractors `bbox_roi_extractor` and `mask_roi_extractor`, the heads' own calls,
    `predict` and `loss_terms`, and `predict_masks`. There is no `call`: Keras' `__call__` would cast every float
    argument, boxes included, to the compute dtype (bfloat16 under mixed precision), while boxes must stay float32.
    """
    SECTIONS = {"cfg": RoIHeadCfg, "train_cfg": RCNNTrainCfg, "test_cfg": RCNNTestCfg}

    def __init__(self, cfg: RoIHeadCfg, train_cfg: RCNNTrainCfg = None, test_cfg: RCNNTestCfg = None,
                 name="roi_head", **kwargs):
        super().__init__(name=name, **kwargs)
        self.cfg = cfg
        self.train_cfg = train_cfg if train_cfg is not None else RCNNTrainCfg()
        self.test_cfg = test_cfg if test_cfg is not None else RCNNTestCfg()
        self.with_mask = cfg.mask_head is not None
        if self.with_mask and cfg.mask_roi_extractor is None:
            raise ValueError("StandardRoIHead: a mask_head needs a mask_roi_extractor")
        self.assigner = MaxIoUAssigner(self.train_cfg.assigner)
        self.sampler = RandomSampler(self.train_cfg.sampler)
        self.bbox_roi_extractor = SingleRoIExtractor(cfg.bbox_roi_extractor, self.compute_dtype)
        self.bbox_head = Shared2FCBBoxHead(cfg.bbox_head, dtype=self.dtype_policy)
        self.mask_roi_extractor = self.mask_head = None
        if self.with_mask:
            self.mask_roi_extractor = SingleRoIExtractor(cfg.mask_roi_extractor, self.compute_dtype)
            self.mask_head = FCNMaskHead(cfg.mask_head, dtype=self.dtype_policy)
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

    def shared_pyramid(self, features):
        """The RoIAlign canvas of the maps both extractors read (`stack_pyramid`), or None when they differ (a
        Faster R-CNN, RoIPool, other strides): built once per forward pass instead of once per extractor."""
        box, mask = self.cfg.bbox_roi_extractor, self.cfg.mask_roi_extractor
        if not self.with_mask or "RoIPool" in (box.roi_layer.type, mask.roi_layer.type) or \
                tuple(box.featmap_strides) != tuple(mask.featmap_strides):
            return None
        return stack_pyramid(features[:len(box.featmap_strides)])

    # ------------------------------------------------------------------------------------------------ training

    def loss_terms(self, features, proposals, proposals_valid, gt_boxes, gt_classes, gt_masks, ignore_boxes, seed,
                   gt_mask_boxes=None):
        """R-CNN training losses as (sum, count) pairs.

        Args:
          features: list of [B, H_l, W_l, C] FPN maps, finest first (P2..P6 or P2..P5).
          proposals: [B, N, 4] RPN proposals in padded-input pixels; proposals_valid: bool [B, N].
          gt_boxes: float32 [B, M, 4] in padded-input pixels; gt_classes: int32 [B, M] in 1..C, 0 = padding.
          gt_masks: [B, M, h, w] in [0, 1], mask m covering gt_mask_boxes[m]; None without a mask head.
          ignore_boxes: [B, K, 4] ignore regions (all-zero rows are padding), or None; used when the assigner's
            ignore_iof_thr > 0.
          seed: int32 [2] or per-image [B, 2], the stateless seed of the sampler.
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
        sample = self.sampler.sample(self.assigner, proposals, gt_boxes, gt_classes > 0, seed,
                                     tf.cast(proposals_valid, tf.bool), ignore_boxes)
        labels = tf.where(sample.positive, tf.gather(gt_classes, sample.matched, batch_dims=1), 0)
        pyramid = self.shared_pyramid(features)
        cls_logits, deltas = self.bbox_head(self.bbox_roi_extractor(features, sample.boxes, pyramid))
        terms = self.bbox_head.loss_terms(cls_logits, deltas, sample.boxes, labels,
                                          tf.gather(gt_boxes, sample.matched, batch_dims=1), sample.valid,
                                          sample.positive, self.train_cfg.pos_weight)
        if self.with_mask:
            if gt_masks is None:
                raise ValueError("StandardRoIHead.loss_terms: a mask head needs gt_masks")
            terms.update(self._mask_loss_terms(features, sample, labels, gt_masks, gt_mask_boxes, pyramid))
        return terms

    def _mask_loss_terms(self, features, sample, labels, gt_masks, gt_mask_boxes, pyramid):
        """The mask head's loss on the sampled positives (train_cfg.rcnn.mask_rois says which slots it runs on)."""
        rois, positive, matched = sample.boxes, sample.positive, sample.matched
        mask_rois = self.train_cfg.mask_rois
        if mask_rois == "positives" and self.mask_roi_extractor.roi_layer.type == "RoIAlign":
            # The batch's positives as one list, as torchvision and MMDetection run the mask head: no slot of an
            # image with fewer positives than another costs mask-head work.
            where = tf.cast(tf.where(positive), tf.int32)  # [P, 2]: (image, slot)
            num = tf.shape(where)[0]
            # With no positive at all, one placeholder RoI (weight 0) keeps the mask head off empty tensors,
            # whose convolution gradients TensorFlow's oneDNN kernels cannot compute.
            where = tf.concat([where, tf.zeros([1, 2], tf.int32)], axis=0)[:tf.maximum(num, 1)]
            images = where[:, 0]
            rois, labels, matched = [tf.gather_nd(t, where) for t in (rois, labels, matched)]
            roi_features = self.mask_roi_extractor(features, rois, pyramid, image_indices=images)[None]
            pairs = tf.stack([images, matched], axis=1)
            gt_masks, gt_mask_boxes = tf.gather_nd(gt_masks, pairs)[None], tf.gather_nd(gt_mask_boxes, pairs)[None]
            rois, labels, matched = rois[None], labels[None], tf.range(tf.shape(rois)[0])[None]
            weights = tf.cast(tf.range(tf.shape(where)[0]) < num, tf.float32)[None]
        else:
            # random_sample puts positives first and takes at most int(num * pos_fraction): these slots hold them all.
            p = min(int(self.sampler.cfg.num * self.sampler.cfg.pos_fraction), rois.shape[1])
            if mask_rois == "positives":  # RoIPool: the slots past the batch's largest count are empty
                # (at least one slot, masked out when empty: see the placeholder above)
                p = tf.maximum(tf.reduce_max(tf.reduce_sum(tf.cast(positive[:, :p], tf.int32), axis=1)), 1)
            rois, labels, matched, positive = rois[:, :p], labels[:, :p], matched[:, :p], positive[:, :p]
            roi_features = self.mask_roi_extractor(features, rois, pyramid)
            weights = tf.cast(positive, tf.float32)
        return self.mask_head.loss_terms(self.mask_head(roi_features), labels, gt_masks, gt_mask_boxes, rois, matched,
                                         weights, self.train_cfg)

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
        cls_logits, deltas = self.bbox_head(self.bbox_roi_extractor(features, proposals, pyramid))
        detections = self.bbox_head.predict(cls_logits, deltas, proposals, proposals_valid, image_size, self.test_cfg)
        if self.with_mask:
            detections["detection_masks"] = self.predict_masks(
                features, detections["detection_boxes"], detections["detection_classes"], pyramid)
        return detections

    def predict_masks(self, features, boxes, classes, pyramid=None):
        """Mask probabilities of boxes [B, K, 4] (padded-input pixels) for classes int32 [B, K] (1..C, 0 = none)
        → float32 [B, K, 28, 28] in the boxes' frames; 0 where the class is 0."""
        return self.mask_head.predict(self.mask_head(self.mask_roi_extractor(features, boxes, pyramid)), classes)
