import os

import numpy as np
import pytest
import tensorflow as tf

import tfrcnn
from detection_fixtures import batch_dataset, coco_ap, shapes_scenes, tiny_config
from tfrcnn.inference import Postprocessor
from tfrcnn.training.optimizer import build_optimizer
from torchvision_detection import box_iou

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LOSS_NAMES = ["rpn_cls", "rpn_bbox", "rcnn_cls", "rcnn_bbox", "mask", "loss"]


@pytest.mark.parametrize("name,low,high,with_mask", [
    ("mask_rcnn_r50_fpn_1x_coco.yaml", 44.0e6, 44.5e6, True),
    ("faster_rcnn_r50_fpn_1x_coco.yaml", 41.5e6, 41.9e6, False),
])
def test_shipped_configs_build_to_torchvision_size_and_run_1024(name, low, high, with_mask):
    # torchvision: 44,401,393 (Mask R-CNN) and 41,755,286 (Faster R-CNN) parameters with 91 classes; ours has 80.
    model = tfrcnn.build_model(tfrcnn.load_config(os.path.join(ROOT, "configs", name)))
    assert low <= model.count_params() <= high, model.count_params()
    out = model(tf.zeros([1, 1024, 1024, 3]))
    assert out["detection_boxes"].shape == (1, 100, 4) and out["detection_classes"].dtype == tf.int32
    assert ("detection_masks" in out) == with_mask
    if with_mask:
        assert out["detection_masks"].shape == (1, 100, 28, 28)


def test_fit_logs_every_loss_by_name_and_predict_returns_detections():
    cfg = tiny_config()
    model = tfrcnn.build_model(cfg)
    images, targets, _ = shapes_scenes(2, 128)
    model.compile(optimizer=build_optimizer(cfg, steps_per_epoch=2))
    history = model.fit(batch_dataset(images, targets, 2), epochs=2, steps_per_epoch=2, verbose=0)
    assert sorted(history.history) == sorted(LOSS_NAMES)
    assert all(np.isfinite(v).all() and v[-1] > 0 for v in history.history.values())
    logs = model.evaluate(batch_dataset(images, targets, 2), steps=1, return_dict=True, verbose=0)
    assert sorted(logs) == sorted(LOSS_NAMES)
    out = model.predict(images, batch_size=2, verbose=0)
    assert out["detection_boxes"].shape == (2, 20, 4) and out["detection_masks"].shape == (2, 20, 28, 28)
    # Boxes are inside the image; masks are probabilities.
    assert out["detection_boxes"].min() >= 0 and out["detection_boxes"].max() <= 128
    assert 0 <= out["detection_masks"].min() and out["detection_masks"].max() <= 1


def test_compile_auto_does_not_xla_compile_the_whole_step_on_a_gpu(monkeypatch):
    # Keras resolves jit_compile="auto" to XLA for the whole train step when it sees a GPU; that step holds
    # CombinedNonMaxSuppression, which XLA cannot compile, so training would fail on every GPU machine.
    cfg = tiny_config()
    model = tfrcnn.build_model(cfg)
    gpu = tf.config.PhysicalDevice(name="/physical_device:GPU:0", device_type="GPU")
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda *a: [gpu])
    model.compile(optimizer=build_optimizer(cfg, steps_per_epoch=2))
    assert model.jit_compile is False


@pytest.mark.parametrize("faster", [False, True])
def test_degenerate_batches_give_finite_losses(faster):
    cfg = tiny_config(faster=faster)
    model = tfrcnn.build_model(cfg)
    model.compile(optimizer=build_optimizer(cfg, steps_per_epoch=1))
    images, targets, _ = shapes_scenes(2, 128)
    # Image 1 has no gt at all.
    empty = {k: v.copy() for k, v in targets.items()}
    empty["gt_classes"][1] = 0
    empty["gt_boxes"][1] = 0
    logs = model.train_step((tf.constant(images), {k: tf.constant(v) for k, v in empty.items()}))
    assert all(np.isfinite(float(v)) for v in logs.values())
    # No gt anywhere: no positive anchor or RoI, so the box and mask losses are exactly 0.
    for k in ("gt_classes", "gt_boxes"):
        empty[k][:] = 0
    model.reset_metrics()  # train_step returns running means: look at this step alone
    logs = model.train_step((tf.constant(images), {k: tf.constant(v) for k, v in empty.items()}))
    assert all(np.isfinite(float(v)) for v in logs.values())
    assert float(logs["rpn_bbox"]) == 0.0 and float(logs["rcnn_bbox"]) == 0.0
    assert faster or float(logs["mask"]) == 0.0


@pytest.mark.parametrize("overrides,compute_dtype", [
    ("runtime.jit_compile=true,runtime.mixed_precision=mixed_bfloat16", "bfloat16"),
    ("runtime.mixed_precision=mixed_float16", "float16"),
])
def test_train_step_under_xla_and_mixed_precision(overrides, compute_dtype):
    cfg = tiny_config(overrides)
    model = tfrcnn.build_model(cfg)
    assert model.backbone.compute_dtype == compute_dtype
    model.compile(optimizer=build_optimizer(cfg, steps_per_epoch=2, model=model))
    # float16 needs loss scaling: Keras' compile wraps the optimizer because the model's policy is mixed_float16.
    assert (type(model.optimizer).__name__ == "LossScaleOptimizer") == (compute_dtype == "float16")
    images, targets, _ = shapes_scenes(2, 64)
    history = model.fit(batch_dataset(images, targets, 2), epochs=1, steps_per_epoch=2, verbose=0)
    assert all(np.isfinite(v).all() for v in history.history.values())


def overfit(cfg, steps, size=256, num_images=4):
    """(the model trained `steps` steps on `num_images` shapes scenes, the scenes, their COCO AP)."""
    images, targets, full_masks = shapes_scenes(num_images, size, seed=1)
    model = tfrcnn.build_model(cfg)
    model.compile(optimizer=build_optimizer(cfg, steps_per_epoch=steps, model=model))
    model.fit(batch_dataset(images, targets, num_images), epochs=1, steps_per_epoch=steps, verbose=0)
    detections = model.predict(images, batch_size=num_images, verbose=0)
    return model, images, coco_ap(targets, full_masks, detections, with_mask=cfg.model.with_mask)


@pytest.fixture(scope="module")
def overfit_mask_rcnn():
    return overfit(tiny_config(), steps=100)


# The issue allows at most 300 steps; 100 reach AP50 1.0 for both models (measured: Mask R-CNN bbox/segm AP
# 0.83/0.87, Faster R-CNN AP 0.76), which keeps the suite short.
def test_mask_rcnn_overfits_four_images(overfit_mask_rcnn):
    stats = overfit_mask_rcnn[2]
    assert stats["bbox"][1] >= 0.9 and stats["segm"][1] >= 0.9, {k: v[:2] for k, v in stats.items()}


def test_faster_rcnn_overfits_four_images():
    stats = overfit(tiny_config(faster=True), steps=100)[2]
    assert stats["bbox"][1] >= 0.9, stats["bbox"][:2]


def test_bfloat16_detections_match_float32_on_a_trained_model(overfit_mask_rcnn):
    """The trained Mask R-CNN with its float32 weights computing in mixed_bfloat16 (what `--precision
    mixed_bfloat16` serves): each confident float32 detection (score >= 0.5) has a bfloat16 detection of the same
    class and score (|Δscore| <= 0.05) on the same object (box IoU >= 0.5); at least 3 in 4 of them match at box IoU
    >= 0.9, and their pasted masks at IoU >= 0.9. A share, not all: this model trains without op determinism, and in
    2 of 5 trainings measured on a Xeon with AMX one of its 9 confident detections (score 0.998) came out of bfloat16
    at box IoU 0.83-0.84, same class and score, all others >= 0.92; in the other 3 all were >= 0.99. (Its
    unconfident detections are too few for a share: one or two ambiguous ones move their score by up to 0.1 in
    bfloat16. BENCHMARKS.md measures the share of all detections on the main job's model, 200 images: 98%.)"""
    model, images, _ = overfit_mask_rcnn
    bf16 = tfrcnn.build_model(tiny_config("runtime.mixed_precision=mixed_bfloat16"))
    bf16.set_weights(model.get_weights())
    assert bf16.backbone.compute_dtype == "bfloat16"
    paste = Postprocessor([1, 2]).paste

    def detections(outputs, i):
        """Image i's (boxes, scores, classes, masks pasted at the input's size)."""
        n = int(outputs["num_detections"][i])
        boxes = outputs["detection_boxes"][i, :n]
        masks = paste(outputs["detection_masks"][i:i + 1, :n], boxes[None], images.shape[1:3])[0].numpy() > 0
        return boxes, outputs["detection_scores"][i, :n], outputs["detection_classes"][i, :n], masks

    reference, ours = [m.predict(images, batch_size=len(images), verbose=0) for m in (model, bf16)]
    confident = matched = 0
    for i in range(len(images)):
        (b, s, c, m), (b2, s2, c2, m2) = detections(reference, i), detections(ours, i)
        ious = box_iou(b, b2) * (c[:, None] == c2[None, :]) * (np.abs(s[:, None] - s2[None, :]) <= 0.05)
        for k in np.flatnonzero(s >= 0.5):
            confident += 1
            j = int(ious[k].argmax()) if len(b2) else -1
            assert j >= 0 and ious[k, j] >= 0.5, f"image {i}: float32 detection {k} (score {s[k]:.3f}) lost"
            if ious[k, j] >= 0.9:
                matched += 1
                mask_iou = (m[k] & m2[j]).sum() / max((m[k] | m2[j]).sum(), 1)
                assert mask_iou >= 0.9, f"image {i}: mask of detection {k} at IoU {mask_iou:.3f}"
    assert confident >= 8  # the model detects its shapes
    assert matched >= 0.75 * confident, f"{matched} of {confident} confident detections match at box IoU >= 0.9"
