"""tfrcnn's side of scripts/benchmark.py: the config's detector at the benchmark's settings, one timed unit of work
at a time, and the inference stage by stage through the model's public seams."""
import statistics
import time

import numpy as np
import tensorflow as tf

import tfrcnn
from tfrcnn import structures
from tfrcnn.data import pipeline
from tfrcnn.export import DetectionModule, export_saved_model
from tfrcnn.ops.image import denormalize
from tfrcnn.training import build_optimizer, configure_determinism


class TfrcnnRunner:
    """The detector of `config_file` + `overrides` (which set the square image size), its training batch and its
    uint8 images.

    data: "synthetic" (random pixels, 8 random gt boxes and masks per image) or "train" (the first batch of the
    config's training split, through the input pipeline); train_batch: images per training step (None:
    data.samples_per_gpu); images: how many uint8 images to hold for inference; train: compile for `run("train")`;
    saved_model_dir: export the model there (image_tensor, masks pasted) and run inference through the SavedModel.
    """

    def __init__(self, config_file, overrides, image_size, data="synthetic", train_batch=None, images=1, train=True,
                 saved_model_dir=None):
        self.config = tfrcnn.load_config(config_file, overrides)
        self.image_size = image_size
        self.train_batch_size = train_batch or self.config.data.samples_per_gpu
        configure_determinism(self.config)  # as training runs the config (runtime.deterministic)
        self.model = tfrcnn.build_model(self.config, build_size=(image_size, image_size))
        self.module = DetectionModule(self.model, self.config, paste_masks=self.config.model.with_mask)
        self.detect = self.module.detect
        if saved_model_dir:
            export_saved_model(self.model, self.config, saved_model_dir, paste_masks=self.config.model.with_mask)
            signature = tf.saved_model.load(saved_model_dir).signatures["image_tensor"]
            self.detect = lambda images: signature(inputs=images)
        batch = max(images, self.train_batch_size)
        if data == "train":
            self.train_batch, self.images = self._training_batch(batch)
        else:
            self.train_batch, self.images = self._synthetic_batch(batch, np.random.default_rng(0))
        self.synthetic = data != "train"
        if train:
            self.model.compile(optimizer=build_optimizer(self.config, steps_per_epoch=1000, model=self.model))

    def _synthetic_batch(self, batch, rng):
        """Random pixels, 8 random gt boxes per image with random masks: ((images, targets), uint8 images)."""
        s, b, m = self.image_size, self.train_batch_size, 8
        images = tf.constant(rng.integers(0, 256, (batch, s, s, 3)), tf.uint8)
        y1, x1 = rng.uniform(0, s * 0.6, (2, b, m))
        h, w = rng.uniform(32, s * 0.4, (2, b, m))
        crop = self.config.data.mask_crop_size
        targets = {
            structures.GT_BOXES: tf.constant(np.stack([y1, x1, y1 + h, x1 + w], -1), tf.float32),
            structures.GT_CLASSES: tf.constant(rng.integers(1, self.config.model.roi_head.bbox_head.num_classes + 1,
                                                            (b, m)), tf.int32),
            structures.IMAGE_SIZE: tf.constant([[s, s]] * b, tf.int32),
        }
        if self.config.model.with_mask:
            targets[structures.GT_MASKS] = tf.constant(rng.uniform(size=(b, m, crop, crop)) > 0.5, tf.float32)
        return (tf.random.stateless_normal([b, s, s, 3], [0, 0]), targets), images

    def _training_batch(self, batch):
        """The first batch of the training split (as train.py's pipeline delivers it), its images also as uint8."""
        b = self.train_batch_size
        images, targets = next(iter(pipeline.build_dataset(self.config, "train", training=True, batch_size=batch)))
        pixels = denormalize(images, self.config.data.img_norm_cfg)
        return (images[:b], {k: v[:b] for k, v in targets.items()}), pixels

    def torchvision_batch(self, path):
        """Writes the training batch for torchvision to `path` (.npz): per image its pixels in [0, 1] (CHW, the
        true size), gt boxes [x1, y1, x2, y2], labels and full-image masks, the gt that tfrcnn's batch holds."""
        from PIL import Image
        images, targets = self.train_batch
        t = {k: v.numpy() for k, v in targets.items()}
        if self.synthetic:  # the normal noise tfrcnn trains on, mapped into [0, 255]
            pixels = np.clip(images.numpy() * 64 + 128, 0, 255)
        else:
            pixels = self.images.numpy()[:self.train_batch_size]
        arrays = {}
        for i in range(self.train_batch_size):
            h, w = t[structures.IMAGE_SIZE][i]
            keep = t[structures.GT_CLASSES][i] > 0
            boxes = t[structures.GT_BOXES][i][keep]
            arrays[f"image_{i}"] = (pixels[i, :h, :w].transpose(2, 0, 1) / 255.0).astype(np.float32)
            arrays[f"boxes_{i}"] = boxes[:, [1, 0, 3, 2]].astype(np.float32)
            arrays[f"labels_{i}"] = t[structures.GT_CLASSES][i][keep].astype(np.int64)
            masks = np.zeros((len(boxes), h, w), np.uint8)
            if structures.GT_MASKS in t:
                for k, (crop, (y1, x1, y2, x2)) in enumerate(zip(t[structures.GT_MASKS][i][keep], boxes)):
                    top, left = int(np.floor(y1)), int(np.floor(x1))
                    bottom, right = min(int(np.ceil(y2)), h), min(int(np.ceil(x2)), w)
                    if bottom > top and right > left:
                        pasted = Image.fromarray((crop * 255).astype(np.uint8)).resize((right - left, bottom - top))
                        masks[k, top:bottom, left:right] = np.asarray(pasted) >= 128
            arrays[f"masks_{i}"] = masks
        np.savez(path, count=self.train_batch_size, **arrays)

    def run(self, mode, batch=1):
        """Seconds of one unit: an inference call on `batch` images ("inference", "throughput") or one training
        step ("train")."""
        start = time.perf_counter()
        if mode == "train":
            logs = self.model.train_on_batch(*self.train_batch, return_dict=True)
            float(logs["loss"])  # waits for the step
        else:
            tf.nest.map_structure(lambda t: t.numpy(), self.detect(self.images[:batch]))
        return time.perf_counter() - start

    def peak_gpu_memory_mb(self):
        """TensorFlow's peak GPU memory, or None without a GPU."""
        if not tf.config.list_physical_devices("GPU"):
            return None
        return round(tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20, 1)

    def profile(self, repeats):
        """{stage: median seconds of `repeats` runs} of the inference of one image, stage by stage (each a
        tf.function), through the seams the model's own inference is made of."""
        model, roi, transform, post = self.model, self.model.roi_head, self.module.transform, self.module.postprocess
        image = self.images[0]
        padded, size, _ = transform.preprocess(image)
        x, size = padded[None], size[None]
        stages = {}

        def stage(name, fn, *args):
            fn = tf.function(fn)
            fn(*args)  # trace
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                out = fn(*args)
                tf.nest.map_structure(lambda t: t.numpy(), out)
                times.append(time.perf_counter() - start)
            stages[name] = round(statistics.median(times), 4)
            return out

        stage("preprocess", transform.preprocess, image)
        feats_c = stage("backbone", lambda t: model.backbone(t, training=False), x)
        feats = stage("fpn", lambda c: model.neck(c, training=False), feats_c)
        logits, deltas = stage("rpn_head", lambda f: model.rpn_head(f, training=False), feats)
        anchors = model.rpn_head.anchors(tuple(x.shape[1:3]), feats)
        proposals, _, valid = stage("proposals_nms", lambda lg, d: model.rpn_head.get_proposals(
            lg, d, anchors, size, self.config.test_cfg.rpn), logits, deltas)
        pyramid = stage("roi_pyramid", roi.shared_pyramid, feats) if roi.with_mask else None
        box_feats = stage("roi_align_box", roi.bbox_roi_extractor, feats, proposals, pyramid)
        cls_logits, box_deltas = stage("box_head", roi.bbox_head, box_feats)
        detections = stage("detections_nms", lambda c, d, p, v: roi.bbox_head.predict(c, d, p, v, size, roi.test_cfg),
                           cls_logits, box_deltas, proposals, valid)
        if roi.with_mask:
            boxes, classes = detections["detection_boxes"], detections["detection_classes"]
            mask_feats = stage("roi_align_mask", roi.mask_roi_extractor, feats, boxes, pyramid)
            masks = stage("mask_head", lambda m, c: roi.mask_head.predict(roi.mask_head(m), c), mask_feats, classes)
            stage("paste_masks", lambda m, b: post.paste(m, b, tuple(x.shape[1:3])), masks, boxes)
        return stages
