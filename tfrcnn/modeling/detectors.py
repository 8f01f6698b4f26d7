"""FasterRCNN and MaskRCNN: the two-stage detectors as `keras.Model`s.

    images ─ ResNet ─ FPN (P2–P6) ─ RPNHead ─┬─ RPN losses (anchors ▸ MaxIoUAssigner ▸ RandomSampler)
                                             └─ proposals (NMS per level ▸ top-k)
             StandardRoIHead: proposals + gt ▸ assigner/sampler ▸ RoIAlign ▸ Shared2FC (+ FCN mask) ▸ losses
                              or, at test time, decode ▸ per-class NMS ▸ masks of the final boxes

`model(images)` / `model.predict(...)` detect; `fit` trains through `train_step`, which takes the batch
structure of `tfrcnn.structures`; `evaluate` reports the losses through `test_step`.
"""
import keras
import tensorflow as tf

from tfrcnn import structures
from tfrcnn.config import Config
from tfrcnn.modeling.fpn import FPN, spatial_size
from tfrcnn.modeling.resnet import ResNet
from tfrcnn.modeling.roi_heads import StandardRoIHead
from tfrcnn.modeling.rpn import RPNHead

RPN_SEED_SALT, RCNN_SEED_SALT = 0, 1 << 20  # keep the two samplers' noise apart


def _check_channels(m, backbone_channels):
    """Raises ValueError when two sections disagree on the channels of the maps one hands the other: every
    channel count MMDetection's configs spell out (the FPN's inputs, the RPN's, the RoI extractors' outputs and
    the heads' inputs) must be the one those maps have."""
    links = [("backbone", list(backbone_channels), "neck.in_channels", list(m.neck.in_channels)),
             ("neck.out_channels", m.neck.out_channels, "rpn_head.in_channels", m.rpn_head.in_channels)]
    roi = m.roi_head
    for kind in ("bbox", "mask") if m.with_mask else ("bbox",):
        extractor, head = getattr(roi, f"{kind}_roi_extractor"), getattr(roi, f"{kind}_head")
        links += [("neck.out_channels", m.neck.out_channels, f"roi_head.{kind}_roi_extractor.out_channels",
                   extractor.out_channels),
                  (f"roi_head.{kind}_roi_extractor.out_channels", extractor.out_channels,
                   f"roi_head.{kind}_head.in_channels", head.in_channels)]
    for source, given, key, expected in links:
        if given != expected:
            raise ValueError(f"model.{key} is {expected}, but model.{source} gives maps of {given} channels: "
                             f"set model.{key} to {given}")


class TwoStageDetector(keras.Model):
    """Backbone + FPN + RPN + StandardRoIHead, configured by a `tfrcnn.config.Config`.

    Inputs: images float32 [B, H, W, 3], normalized and padded (the padded network input). `call` also accepts a
    dict {"images", "image_size"} where image_size int32 [B, 2] is each image's true (h, w); without it the whole
    padded image counts.
    Outputs of `call`: {detection_boxes [B, K, 4] ([y1, x1, y2, x2] in padded-input pixels), detection_scores
    [B, K], detection_classes int32 [B, K] in 1..num_classes (0 = padding), num_detections int32 [B], and for
    Mask R-CNN detection_masks [B, K, 28, 28] probabilities in each box's frame}, K = test_cfg.rcnn.max_per_img.
    """

    def __init__(self, config, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        m = config.model
        self.backbone = ResNet(m.backbone, name="backbone")
        _check_channels(m, self.backbone.out_channels)
        self.neck = FPN(m.neck, name="neck")
        self.rpn_head = RPNHead(m.rpn_head, config.train_cfg.rpn, name="rpn_head")
        self.roi_head = StandardRoIHead(m.roi_head, config.train_cfg.rcnn, config.test_cfg.rcnn, name="roi_head")
        self.loss_names = ["rpn_cls", "rpn_bbox", "rcnn_cls", "rcnn_bbox"] + (["mask"] if m.with_mask else [])
        self.trackers = {name: keras.metrics.Mean(name=name) for name in self.loss_names + ["loss"]}
        # Keras' compile(jit_compile="auto") XLA-compiles the whole train and predict steps when a GPU is present,
        # which fails: CombinedNonMaxSuppression has no XLA kernel. This keeps "auto" off; runtime.jit_compile
        # compiles the part that can be.
        self.supports_jit = False
        self._dense_forward = self._features
        if config.runtime.jit_compile:
            # XLA compiles the dense part (most of the FLOPs); NMS and crop_and_resize, which have no XLA kernels,
            # run between compiled parts (tf.function(jit_compile=True) compiles everything it calls).
            self._dense_forward = tf.function(self._features, jit_compile=True, reduce_retracing=True)

    @property
    def with_mask(self):
        return self.config.model.with_mask

    @property
    def metrics(self):
        return list(self.trackers.values())

    def get_config(self):
        return {"config": self.config.to_dict(), "name": self.name}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        return cls(Config.from_dict(config.pop("config")), **config)

    # ------------------------------------------------------------------------------------------ forward

    def _features(self, images, training):
        """Backbone, FPN and the RPN head's convolutions: list P2..P6, RPN logits and deltas per level."""
        features = self.neck(self.backbone(images, training=training), training=training)
        logits, deltas = self.rpn_head(features, training=training)
        return features, logits, deltas

    @staticmethod
    def _unpack(inputs):
        if isinstance(inputs, dict):
            images = inputs["images"]
            image_size = inputs.get(structures.IMAGE_SIZE)
        else:
            images, image_size = inputs, None
        if image_size is None:
            shape = tf.shape(images)
            image_size = tf.tile(shape[None, 1:3], [shape[0], 1])
        return images, tf.cast(image_size, tf.int32)

    def call(self, inputs, training=False):
        images, image_size = self._unpack(inputs)
        features, logits, deltas = self._dense_forward(images, training=False)
        anchors = self.rpn_head.anchors(spatial_size(images), features)
        proposals, _, valid = self.rpn_head.get_proposals(logits, deltas, anchors, image_size,
                                                          self.config.test_cfg.rpn)
        return self.roi_head.predict(features, proposals, valid, image_size)

    def loss_terms(self, images, targets, seeds, training=True):
        """Every loss as a (sum, count) pair for this batch shard; `seeds` int64 [B, 2] drive the samplers."""
        targets = structures.check_targets(targets, self.with_mask)
        gt_boxes = tf.cast(targets[structures.GT_BOXES], tf.float32)
        gt_classes = tf.cast(targets[structures.GT_CLASSES], tf.int32)
        ignore = tf.cast(targets[structures.IGNORE_BOXES], tf.float32)
        image_size = tf.cast(targets[structures.IMAGE_SIZE], tf.int32)
        features, logits, deltas = self._dense_forward(images, training=training)
        anchors = self.rpn_head.anchors(images.shape[1:3], features)
        terms = dict(self.rpn_head.loss_terms(logits, deltas, anchors, gt_boxes, gt_classes, ignore, image_size,
                                          seeds + [RPN_SEED_SALT, 0]))
        proposals, _, valid = self.rpn_head.get_proposals(logits, deltas, anchors, image_size,
                                                          self.config.train_cfg.rpn_proposal)
        terms.update(self.roi_head.loss_terms(features, proposals, valid, gt_boxes, gt_classes,
                                          targets.get(structures.GT_MASKS), ignore, seeds + [RCNN_SEED_SALT, 0],
                                          gt_mask_boxes=targets.get(structures.GT_MASK_BOXES)))
        return terms

    # ------------------------------------------------------------------------------------------ training

    def _seeds(self, images, step):
        """Per-image sampler seeds [B, 2] = (runtime.seed + step, global image index): the same image samples the
        same boxes on any replica, so a distributed step matches the single-device step on the same global batch."""
        batch = tf.shape(images)[0]
        replica = tf.distribute.get_replica_context()
        replica_id = replica.replica_id_in_sync_group if replica is not None else 0
        first = tf.cast(replica_id, tf.int64) * tf.cast(batch, tf.int64)
        index = first + tf.range(tf.cast(batch, tf.int64))
        base = tf.cast(self.config.runtime.seed, tf.int64) + tf.cast(step, tf.int64)
        return tf.stack([tf.fill([batch], base), index], axis=1)

    def _global_losses(self, terms):
        """Normalizes (sum, count) pairs over the GLOBAL batch.

        Returns (objective, logs): `objective` is this replica's share (its sums over the global counts), whose
        gradients, summed over replicas by the optimizer, are the gradients of the global-batch loss; `logs` are
        the global losses, the same on every replica.
        """
        replica = tf.distribute.get_replica_context()
        if replica is None:
            raise RuntimeError("losses are normalized across replicas: run train_step/test_step through "
                               "strategy.run (fit does), not in a cross-replica context")
        sums = tf.stack([tf.cast(terms[n][0], tf.float32) for n in self.loss_names])
        counts = tf.stack([tf.cast(terms[n][1], tf.float32) for n in self.loss_names])
        counts = replica.all_reduce(tf.distribute.ReduceOp.SUM, counts)
        shares = sums / tf.maximum(counts, 1.0)
        logs = replica.all_reduce(tf.distribute.ReduceOp.SUM, tf.stop_gradient(shares))
        logs = {name: logs[i] for i, name in enumerate(self.loss_names)}
        logs["loss"] = tf.add_n(list(logs.values()))
        return tf.reduce_sum(shares), logs

    def _update_trackers(self, logs):
        for name, value in logs.items():
            self.trackers[name].update_state(value)
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    def train_step(self, data):
        # (images, targets) from fit; train_on_batch adds a None sample weight
        images, targets, _ = keras.utils.unpack_x_y_sample_weight(data)
        seeds = self._seeds(images, self.optimizer.iterations)
        with tf.GradientTape() as tape:
            objective, logs = self._global_losses(self.loss_terms(images, targets, seeds, training=True))
            # Weight decay and gradient clipping happen in the optimizer (tfrcnn.training.optimizer.SGD), after
            # the replicas' gradients are summed.
            scaled = self.optimizer.scale_loss(objective)
        grads = tape.gradient(scaled, self.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        return self._update_trackers(logs)

    def test_step(self, data):
        images, targets, _ = keras.utils.unpack_x_y_sample_weight(data)
        seeds = self._seeds(images, 0)
        _, logs = self._global_losses(self.loss_terms(images, targets, seeds, training=False))
        return self._update_trackers(logs)

    def predict_step(self, data):
        if isinstance(data, (tuple, list)):
            images = data[0]
            if len(data) > 1 and isinstance(data[1], dict) and structures.IMAGE_SIZE in data[1]:
                return self({"images": images, structures.IMAGE_SIZE: data[1][structures.IMAGE_SIZE]})
            return self(images)
        return self(data)


@keras.saving.register_keras_serializable("tfrcnn")
class FasterRCNN(TwoStageDetector):
    """Faster R-CNN with FPN (`model.type: FasterRCNN`)."""


@keras.saving.register_keras_serializable("tfrcnn")
class MaskRCNN(TwoStageDetector):
    """Mask R-CNN with FPN (`model.type: MaskRCNN`): adds `detection_masks` and the mask loss."""
