"""Tests for tfrcnn.inference: the test-time Transform (the evaluation batch's equality with it is in
tests/data/test_pipeline.py) and the Postprocessor's way back, on hand-computed cases."""
import json

import numpy as np
import pytest
import tensorflow as tf
from pycocotools import mask as mask_utils

from tfrcnn.config import Config
from tfrcnn.inference import Postprocessor, Transform, coco_results, predict_images

MEAN, STD = np.array([123.675, 116.28, 103.53]), np.array([58.395, 57.12, 57.375])


@pytest.mark.parametrize("normalize_first", [False, True])
def test_size_divisor_padding_and_either_normalization_order(normalize_first):
    cfg = Config.from_dict({"data": {"img_scale": [96, 64], "resize_rounding": "floor", "test_padding": "size_divisor",
                                     "normalize_before_resize": normalize_first}})
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 70, 3)).astype(np.uint8)  # factor min(96/70, 64/40) = 1.3714 → 54 x 96
    padded, size, scale = Transform(cfg.data).preprocess(tf.constant(image))
    assert tuple(size.numpy()) == (54, 96) and padded.shape == (64, 96, 3)
    np.testing.assert_allclose(scale.numpy(), [54 / 40, 96 / 70], rtol=1e-6)
    expected = (tf.image.resize(image.astype(np.float32), (54, 96)).numpy() - MEAN) / STD
    np.testing.assert_allclose(padded.numpy()[:54], expected, atol=2e-5)  # the orders differ by rounding only
    assert not padded.numpy()[54:].any()
    unpadded, _, _ = Transform(cfg.data).preprocess(tf.constant(image), pad=False)
    assert unpadded.shape == (54, 96, 3)
    # a batch of two sizes is padded to the larger, rounded up to size_divisor
    small, _, _ = Transform(cfg.data).preprocess(tf.constant(image[:20, :30]), pad=False)
    batch = Transform(cfg.data).pad(tf.ragged.stack([tf.RaggedTensor.from_tensor(t) for t in (unpadded, small)]))
    assert batch.shape == (2, 64, 96, 3)
    np.testing.assert_array_equal(batch[1, :small.shape[0], :small.shape[1]].numpy(), small.numpy())


def test_boxes_to_original_and_category_ids():
    post = Postprocessor([3, 17, 42], ["circle", "square", "triangle"])
    # scale (y, x) = (2.0, 1.5): original = (y / 2, x / 1.5), clipped to the 64 x 48 image
    boxes = post.boxes_to_original([[[20, 30, 60, 90], [100, -6, 140, 45]]], [[2.0, 1.5]], [[64, 48]])
    np.testing.assert_allclose(boxes[0], [[10, 20, 30, 48], [50, 0, 64, 30]])
    np.testing.assert_array_equal(post.category_ids_of([[2, 3, 0, 1]]), [[17, 42, 0, 3]])
    assert post.label_map == {3: "circle", 17: "square", 42: "triangle"}
    with pytest.raises(ValueError, match="mask_paste"):
        Postprocessor([1], mask_paste="nearest")


def test_postprocess_outputs_and_pasted_masks_of_a_batch_of_two_sizes():
    post = Postprocessor([5], mask_paste="mmdet", mask_threshold=0.5)
    outputs = {"detection_boxes": tf.constant([[[0.0, 0.0, 8.0, 8.0]], [[4.0, 4.0, 8.0, 12.0]]]),
               "detection_scores": tf.constant([[0.9], [0.8]]), "detection_classes": tf.constant([[1], [1]]),
               "num_detections": tf.constant([1, 1]), "detection_masks": tf.ones([2, 1, 28, 28])}
    # image 0: 8 x 8 resized ×1; image 1: 4 x 6 resized ×2 (its box is [2, 2, 4, 6] in original pixels)
    out = post(outputs, tf.constant([[8, 8], [8, 12]]), tf.constant([[1.0, 1.0], [2.0, 2.0]]),
               tf.constant([[8, 8], [4, 6]]), paste=True)
    np.testing.assert_allclose(out["detection_boxes"][1, 0], [2, 2, 4, 6])
    assert out["detection_classes"].numpy().tolist() == [[5], [5]] and out["detection_masks_image"].dtype == tf.uint8
    pasted = out["detection_masks_image"].numpy()
    assert pasted.shape == (2, 1, 8, 8)  # the batch's largest height and width
    assert pasted[0, 0].sum() == 64 and pasted[1, 0].sum() == 8 and pasted[1, 0, 2:4, 2:6].all()
    np.testing.assert_allclose(out["image_info"][1], [[4, 6], [8, 12], [2, 2], [0, 0]])


def test_window_paste_equals_a_whole_image_paste_in_both_modes():
    rng = np.random.default_rng(0)
    masks = rng.uniform(size=(5, 28, 28)).astype(np.float32)
    boxes = np.array([[3.2, 5.1, 30.7, 40.2], [-5, -5, 12, 9], [50, 60, 70, 90], [0, 0, 64, 80], [7, 7, 7, 20]],
                     np.float32)
    for mode in ("mmdet", "torchvision"):
        post = Postprocessor([1], mask_paste=mode, mask_threshold=0.5)
        whole = post.paste(masks[None], boxes[None], (64, 80))[0].numpy()
        windows = post.paste_in_windows(masks, boxes, 64, 80)
        assert windows.shape == (5, 64, 80) and windows.transpose(1, 2, 0).flags.f_contiguous
        np.testing.assert_array_equal(windows, whole, err_msg=mode)


def test_coco_results_drop_padding_and_encode_masks():
    masks = np.zeros((3, 4, 5), np.uint8)
    masks[0, 1:3, 1:4] = 1
    records = coco_results(7, [[1, 1, 3, 4], [0, 0, 1, 1], [0, 0, 2, 2]], [0.9, 0.5, 0.1], [3, 0, 9], masks)
    assert [(r["category_id"], r["bbox"], r["score"]) for r in records] == [(3, [1.0, 1.0, 3.0, 2.0], 0.9),
                                                                           (9, [0.0, 0.0, 2.0, 2.0], 0.1)]
    rle = dict(records[0]["segmentation"], counts=records[0]["segmentation"]["counts"].encode())
    np.testing.assert_array_equal(mask_utils.decode(rle), masks[0])
    json.dumps(records)  # plain Python numbers
    assert all("segmentation" not in r for r in coco_results(7, [[1, 1, 3, 4]], [0.9], [3]))


def test_predict_images_writes_pictures_and_results(tmp_path):
    from PIL import Image
    for name in ("12.png", "photo.png"):
        Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(tmp_path / name)

    def detect(image):
        masks = np.zeros((1, 2, 6, 8), np.uint8)
        masks[0, 0, 1:3, 2:5] = 1
        return {"detection_boxes": np.array([[[1, 2, 3, 5], [0, 0, 0, 0]]], np.float32),
                "detection_scores": np.array([[0.8, 0.0]], np.float32), "detection_classes": np.array([[4, 0]]),
                "num_detections": np.array([1]), "detection_masks_image": masks}

    results = predict_images(detect, [str(tmp_path / "12.png"), str(tmp_path / "photo.png")], str(tmp_path / "out"),
                             {4: "box"}, verbose=False)
    assert [(r["image_id"], r["file_name"], r["category_id"]) for r in results] == [(12, "12.png", 4),
                                                                                  (1, "photo.png", 4)]
    assert json.loads((tmp_path / "out" / "detections.json").read_text()) == results
    drawn = np.asarray(Image.open(tmp_path / "out" / "12.png"))
    assert drawn.shape == (6, 8, 3) and drawn[1:3, 2:5].any()
