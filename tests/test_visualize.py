import numpy as np
import pytest

from tfrcnn.visualize import (CROWD_COLOR, MASK_ALPHA, category_color, draw_detections, draw_ground_truth,
                              draw_records)

NAMES = {1: "rectangle", 2: "ellipse"}


def _gray(h=64, w=96):
    return np.full((h, w, 3), 100, np.uint8)


def test_output_dtype_shape_and_input_untouched():
    image = _gray()
    out = draw_detections(image, [[10, 10, 40, 50]], [1], [0.9], NAMES)
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert (image == 100).all()  # drawn on a copy
    assert (out != image).any()


def test_nothing_to_draw_returns_the_image():
    image = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    np.testing.assert_array_equal(draw_detections(image, np.zeros((0, 4)), [], [], NAMES), image)
    # class 0 is padding: never drawn, whatever its score
    np.testing.assert_array_equal(draw_detections(image, [[1, 1, 20, 20]], [0], [1.0], NAMES), image)


def test_threshold_hides_low_scores():
    image = _gray()
    box = [[20, 20, 50, 60]]
    np.testing.assert_array_equal(draw_detections(image, box, [1], [0.3], NAMES, score_threshold=0.5), image)
    assert (draw_detections(image, box, [1], [0.3], NAMES, score_threshold=0.2) != image).any()
    # the threshold is inclusive
    assert (draw_detections(image, box, [1], [0.5], NAMES, score_threshold=0.5) != image).any()


def test_box_colour_is_the_class_colour_and_stable():
    assert category_color(1) != category_color(2)
    assert category_color(7) == category_color(7)
    assert len({category_color(c) for c in range(1, 91)}) == 90  # COCO's ids get distinct colours
    image = _gray()
    # A box at rows 30..59, columns 10..59: its bottom edge, far from the label, is the class colour.
    for cls in (1, 2):
        out = draw_detections(image, [[30, 10, 60, 60]], [cls], [0.9], NAMES)
        assert tuple(out[59, 35]) == category_color(cls)
        assert tuple(out[45, 10]) == category_color(cls)  # left edge
        assert tuple(out[45, 35]) == (100, 100, 100)  # inside the box: untouched without a mask


def test_mask_overlay_changes_pixels_inside_the_mask_only():
    h, w = 64, 96
    image = np.random.default_rng(1).integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((1, h, w), np.uint8)
    mask[0, 20:40, 30:70] = 1
    # the same detection drawn with and without its mask: only pixels in the mask may differ
    boxes, classes, scores = [[20, 30, 40, 70]], [2], [0.9]
    with_mask = draw_detections(image, boxes, classes, scores, NAMES, masks=mask).astype(np.int32)
    without = draw_detections(image, boxes, classes, scores, NAMES).astype(np.int32)
    changed = (with_mask != without).any(-1)
    assert not changed[mask[0] == 0].any()
    # interior pixels (off the outline and the box border) are blended: (1 - a) * pixel + a * colour
    color = np.array(category_color(2))
    expected = np.round((1 - MASK_ALPHA) * image[30, 50].astype(np.float64) + MASK_ALPHA * color)
    np.testing.assert_allclose(with_mask[30, 50], expected, atol=1)
    # the outline is the opaque class colour; here it lies under the box border, so check a mask without a box
    no_box = draw_detections(image, [[20, 30, 40, 70]], classes, scores, NAMES, masks=mask)
    assert tuple(no_box[39, 50]) == tuple(color)  # bottom row of the mask


def test_mask_probabilities_are_thresholded():
    image = _gray()
    probs = np.zeros((1, 64, 96), np.float32)
    probs[0, 10:20, 10:20] = 0.4  # below 0.5: not part of the mask
    probs[0, 30:50, 40:80] = 0.8
    out = draw_detections(image, [[30, 40, 50, 80]], [1], [0.9], NAMES, masks=probs)
    assert (out[12:18, 12:18] == 100).all()
    assert (out[35:45, 45:75] != 100).all()


def test_label_above_box_or_inside_at_the_top():
    image = _gray(80, 120)
    color = category_color(1)
    # Room above: the label's filled background sits in the rows above the box.
    out = draw_detections(image, [[40, 20, 70, 100]], [1], [0.97], NAMES)
    assert (out[30:40, 20:40] != 100).any(-1).sum() > 50
    assert (np.all(out[:40] == color, -1)).sum() > 50
    # Box touching the top: the label is inside the image, at the box's top.
    out = draw_detections(image, [[0, 20, 50, 100]], [1], [0.97], NAMES)
    assert (np.all(out[1:10, 20:60] == color, -1)).sum() > 100
    # A box at the right edge keeps its label inside the image too.
    out = draw_detections(image, [[40, 110, 70, 120]], [1], [0.97], NAMES)
    assert (np.all(out[20:40, :110] == color, -1)).sum() > 50


def test_unknown_category_and_bad_shapes():
    image = _gray()
    assert (draw_detections(image, [[5, 5, 30, 30]], [77], [0.9], NAMES) != image).any()  # labelled "77"
    with pytest.raises(ValueError, match="masks"):
        draw_detections(image, [[5, 5, 30, 30]], [1], [0.9], NAMES, masks=np.zeros((1, 10, 10)))
    with pytest.raises(ValueError, match="boxes"):
        draw_detections(image, [[5, 5, 30, 30]], [1, 2], [0.9], NAMES)


def test_ground_truth_without_scores_crowd_grey_and_padding_darkened():
    image = _gray()
    out = draw_ground_truth(image, [[10, 10, 30, 30]], [1], NAMES, crowd_boxes=[[40, 50, 60, 90]],
                            valid_size=(50, 80))
    np.testing.assert_array_equal(out[20, 10], category_color(1))  # the box's left side
    np.testing.assert_array_equal(out[45, 50], CROWD_COLOR)  # the crowd box's left side, inside the image
    np.testing.assert_array_equal(out[55, 20], [33, 33, 33])  # below the valid rows: 100 // 3
    np.testing.assert_array_equal(out[5, 85], [33, 33, 33])  # right of the valid columns
    np.testing.assert_array_equal(out[45, 40], [100, 100, 100])  # image, untouched
    # the label is the name alone: the same pixels as a detection labelled without its score would need
    scored = draw_detections(image, [[10, 10, 30, 30]], [1], [1.0], NAMES)
    plain = draw_ground_truth(image, [[10, 10, 30, 30]], [1], NAMES)
    assert (plain != 100).sum() < (scored != 100).sum()  # "rectangle 1.00" covers more than "rectangle"
    assert (plain != scored).any()


def test_records_results_and_annotations_draw_as_arrays_do():
    from pycocotools import mask as mask_utils

    image = _gray()
    mask = np.zeros((64, 96), np.uint8)
    mask[20:40, 30:60] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    rle["counts"] = rle["counts"].decode()
    result = {"image_id": 1, "category_id": 2, "bbox": [30, 20, 30, 20], "score": 0.8, "segmentation": rle}
    expected = draw_detections(image, [[20, 30, 40, 60]], [2], [0.8], NAMES, masks=mask[None])
    np.testing.assert_array_equal(draw_records(image, [result], NAMES), expected)
    # a segm result without its bbox takes its mask's extent
    no_box = {k: v for k, v in result.items() if k != "bbox"}
    np.testing.assert_array_equal(draw_records(image, [no_box], NAMES), expected)
    np.testing.assert_array_equal(draw_records(image, [result], NAMES, score_threshold=0.9), image)
    # annotations: no score, polygons, crowd grey
    annotations = [{"category_id": 1, "bbox": [10, 5, 20, 10], "iscrowd": 0,
                    "segmentation": [[10, 5, 30, 5, 30, 15, 10, 15]]},
                   {"category_id": 2, "bbox": [50, 40, 30, 20], "iscrowd": 1, "segmentation": rle}]
    polygon = np.zeros((64, 96), np.uint8)
    polygon[5:15, 10:30] = 1  # pycocotools rasterizes this rectangle's pixels [5, 15) x [10, 30)
    expected = draw_ground_truth(image, [[5, 10, 15, 30]], [1], NAMES, masks=polygon[None],
                                 crowd_boxes=[[40, 50, 60, 80]])
    drawn = draw_records(image, annotations, NAMES)
    np.testing.assert_array_equal(drawn, expected)
    np.testing.assert_array_equal(drawn[50, 50], CROWD_COLOR)
