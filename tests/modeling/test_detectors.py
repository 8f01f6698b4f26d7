import os

import numpy as np
import pytest
import tensorflow as tf

import tfrcnn
from detection_fixtures import batch_dataset, coco_ap, shapes_scenes, tiny_config
from tfrcnn.training.optimizer import build_optimizer

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
    images, targets, full_masks = shapes_scenes(num_images, size, seed=1)
    model = tfrcnn.build_model(cfg)
    model.compile(optimizer=build_optimizer(cfg, steps_per_epoch=steps, model=model))
    model.fit(batch_dataset(images, targets, num_images), epochs=1, steps_per_epoch=steps, verbose=0)
    detections = model.predict(images, batch_size=num_images, verbose=0)
    return coco_ap(targets, full_masks, detections, with_mask=cfg.model.with_mask)


# The issue allows at most 300 steps; 100 reach AP50 1.0 for both models (measured: Mask R-CNN bbox/segm AP
# 0.83/0.87, Faster R-CNN AP 0.76), which keeps the suite short.
def test_mask_rcnn_overfits_four_images():
    stats = overfit(tiny_config(), steps=100)
    assert stats["bbox"][1] >= 0.9 and stats["segm"][1] >= 0.9, {k: v[:2] for k, v in stats.items()}


def test_faster_rcnn_overfits_four_images():
    stats = overfit(tiny_config(faster=True), steps=100)
    assert stats["bbox"][1] >= 0.9, stats["bbox"][:2]
