"""torchvision's Mask R-CNN / Faster R-CNN checkpoints converted into tfrcnn give torchvision's outputs.

The reference is a random torchvision R50-FPN detector with COCO_V1's structure (tests/torchvision_detection.py),
saved with torch.save. scripts/convert_checkpoint.py converts it and scripts/export_saved_model.py exports the
result, both in processes where torch cannot be imported. Three real photos (skimage.data) of different sizes and
aspect ratios go through torchvision, through the converted model in process, and through the SavedModel's
serving_default as uint8 images. The scale is 320/512 (torchvision's min_size/max_size, tfrcnn's data.img_scale)
instead of COCO's 800/1333 to keep the test fast; every code path is the same.

Tolerances (the README states them): FPN levels within 1e-4 of their largest magnitude; >= 99% of torchvision's
proposals matched at IoU >= 0.999; >= 99% of its detections matched at IoU >= 0.99 with the same class and
|Δscore| <= 1e-3; pasted masks (> 0.5) of >= 99% of the matched detections at IoU >= 0.98.
"""
import os

import numpy as np
import pytest
import skimage.data
import tensorflow as tf
import torch

from no_torch import run_without_torch
from tfrcnn.inference import Transform
from tfrcnn.export import DetectionModule
from tfrcnn.training.checkpoints import load_model
from torchvision_detection import box_iou, reference_detector, run_reference

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS = os.path.join(REPO, "scripts")
MIN_SIZE, MAX_SIZE = 320, 512
SCALE = f"data.img_scale=[{MAX_SIZE},{MIN_SIZE}]"
# 512x512, 400x600 and (portrait) 451x300: resized to 320x320, 320x480 (P6 strides 64 x 60) and 481x320.
IMAGES = {"astronaut": skimage.data.astronaut(), "coffee": skimage.data.coffee(),
          "chelsea_portrait": np.ascontiguousarray(skimage.data.chelsea().transpose(1, 0, 2))}


@pytest.fixture(scope="module", params=["maskrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn"])
def converted(request, tmp_path_factory):
    """(arch, torchvision outputs per image, converted run dir, SavedModel dir)."""
    arch = request.param
    folder = tmp_path_factory.mktemp(arch)
    reference = reference_detector(arch, min_size=MIN_SIZE, max_size=MAX_SIZE, calibration_image=IMAGES["astronaut"])
    torch.save(reference.state_dict(), folder / f"{arch}.pth")
    expected = {name: run_reference(reference, image) for name, image in IMAGES.items()}

    run_dir, export_dir = folder / "converted", folder / "export"
    out = run_without_torch(os.path.join(SCRIPTS, "convert_checkpoint.py"), "--checkpoint", folder / f"{arch}.pth",
                            "--arch", arch, "--output_dir", run_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    masks = ["--paste_masks"] if arch.startswith("maskrcnn") else []
    out = run_without_torch(os.path.join(SCRIPTS, "export_saved_model.py"), "--model_dir", run_dir,
                            "--export_dir", export_dir, "--params_override", SCALE, *masks)
    assert out.returncode == 0, out.stderr[-3000:]
    return arch, expected, run_dir, export_dir


def assert_detections_match(expected, out, name):
    """Final detections (original pixels) and pasted masks of one image against torchvision's."""
    n = int(out["num_detections"][0])
    boxes = out["detection_boxes"][0, :n].numpy()
    scores = out["detection_scores"][0, :n].numpy()
    classes = out["detection_classes"][0, :n].numpy()  # category ids = torchvision's labels
    assert len(expected["boxes"]) > 20, f"{name}: the reference should detect plenty"
    ious = box_iou(expected["boxes"], boxes)
    best = ious.argmax(axis=1)
    matched = ((ious.max(axis=1) >= 0.99) & (classes[best] == expected["labels"])
               & (np.abs(scores[best] - expected["scores"]) <= 1e-3))
    assert matched.mean() >= 0.99, f"{name}: {matched.sum()} of {len(matched)} detections matched"
    if "masks" in expected:
        ours = out["detection_masks_image"][0, :n].numpy() > 0
        theirs = expected["masks"] > 0.5
        mask_ious = []
        for k in np.flatnonzero(matched):
            union = (theirs[k] | ours[best[k]]).sum()
            mask_ious.append((theirs[k] & ours[best[k]]).sum() / union if union else 1.0)
        mask_ious = np.array(mask_ious)
        assert (mask_ious >= 0.98).mean() >= 0.99, f"{name}: mask IoUs {np.sort(mask_ious)[:5]}"


def test_converted_model_matches_torchvision(converted):
    """FPN features and proposals of the converted model, and its detections through DetectionModule."""
    arch, expected, run_dir, _ = converted
    model, config, _ = load_model(str(run_dir), overrides=SCALE)
    module = DetectionModule(model, config, paste_masks=config.model.with_mask)
    for name, image in IMAGES.items():
        ref = expected[name]
        padded, image_size, _ = Transform(config.data).preprocess(tf.constant(image))
        assert tuple(image_size.numpy()) == ref["image_size"] and tuple(padded.shape[:2]) == ref["padded_size"]
        features, logits, deltas = model._features(padded[None], training=False)
        for level, (ours, theirs) in enumerate(zip(features, ref["fpn"])):
            error = np.abs(ours.numpy() - theirs).max() / np.abs(theirs).max()
            assert error <= 1e-4, f"{name}: P{level + 2} differs by {error:.2e} of its largest magnitude"

        anchors = model.rpn_head.anchors(tuple(padded.shape[:2]), features)
        proposals, _, valid = model.rpn_head.get_proposals(logits, deltas, anchors, image_size[None],
                                                           config.test_cfg.rpn)
        proposals = proposals[0].numpy()[valid[0].numpy()]
        assert len(ref["proposals"]) > 100
        found = box_iou(ref["proposals"], proposals).max(axis=1) >= 0.999
        assert found.mean() >= 0.99, f"{name}: {found.sum()} of {len(found)} proposals matched"

        module_out = module.detect(tf.constant(image[None]))
        assert_detections_match(ref, module_out, name)


def test_saved_model_serving_default_matches_torchvision(converted):
    """The exported SavedModel, fed uint8 images, answers in original pixels as torchvision does."""
    _, expected, _, export_dir = converted
    serve = tf.saved_model.load(str(export_dir)).signatures["serving_default"]
    for name, image in IMAGES.items():
        out = serve(inputs=tf.constant(image[None]))
        assert_detections_match(expected[name], out, name)
