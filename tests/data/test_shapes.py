import filecmp
import glob
import json
import os

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from tfrcnn.data import shapes
from tfrcnn.data.shapes import CATEGORIES, ensure_shapes_dataset, generate_shapes_dataset, render_shapes_image

SIZE = (128, 128)
SMALL = dict(num_train=8, num_val=3, image_size=SIZE, seed=7, tfrecords=False)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generate_shapes_dataset(str(tmp_path_factory.mktemp("shapes")), **SMALL)


def load(path):
    with open(path) as f:
        return json.load(f)


def shard_files(pattern):
    return sorted(glob.glob(pattern))


def files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


# ------------------------------------------------------------------------------------------------ determinism

def test_same_arguments_give_identical_bytes(dataset, tmp_path):
    again = generate_shapes_dataset(str(tmp_path), **SMALL)
    assert files(again.root) == files(dataset.root)
    for name in files(dataset.root):
        assert filecmp.cmp(os.path.join(dataset.root, name), os.path.join(again.root, name), shallow=False), name


def test_worker_processes_do_not_change_the_output(dataset, tmp_path):
    again = generate_shapes_dataset(str(tmp_path), **SMALL, num_processes=2)
    for name in files(dataset.root):
        assert filecmp.cmp(os.path.join(dataset.root, name), os.path.join(again.root, name), shallow=False), name


def test_image_does_not_depend_on_dataset_size(dataset, tmp_path):
    fewer = generate_shapes_dataset(str(tmp_path), **{**SMALL, "num_train": 5})
    for i in range(1, 6):
        name = f"{i:06d}.jpg"
        assert filecmp.cmp(os.path.join(fewer.train_image_dir, name), os.path.join(dataset.train_image_dir, name),
                           shallow=False)
    big, small = load(dataset.train_annotations), load(fewer.train_annotations)
    assert small["images"] == big["images"][:5]
    assert small["annotations"] == [a for a in big["annotations"] if a["image_id"] <= 5]


def test_render_is_deterministic_and_seed_split_index_matter():
    image, objects = render_shapes_image(3, "train", 4, SIZE)
    again, objects_again = render_shapes_image(3, "train", 4, SIZE)
    np.testing.assert_array_equal(image, again)
    assert [o["category_id"] for o in objects] == [o["category_id"] for o in objects_again]
    for o, p in zip(objects, objects_again):
        np.testing.assert_array_equal(o["mask"], p["mask"])
    for other in [(4, "train", 4), (3, "val", 4), (3, "train", 5)]:
        assert not np.array_equal(render_shapes_image(*other, SIZE)[0], image)


# ------------------------------------------------------------------------------------------------ COCO files

def test_categories():
    assert [c["id"] for c in CATEGORIES] == list(range(1, len(CATEGORIES) + 1))
    assert {"circle", "square", "triangle"} <= {c["name"] for c in CATEGORIES}


@pytest.mark.parametrize("split", ["train", "val"])
def test_annotations_are_valid_coco(dataset, split):
    data = load(dataset.annotations(split))
    api = COCO(dataset.annotations(split))
    assert [(c["id"], c["name"]) for c in data["categories"]] == [(c["id"], c["name"]) for c in CATEGORIES]
    assert len(data["images"]) == SMALL[f"num_{split}"]
    assert len({a["id"] for a in data["annotations"]}) == len(data["annotations"])

    for image in data["images"]:
        with Image.open(os.path.join(dataset.image_dir(split), image["file_name"])) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            assert (im.height, im.width) == (image["height"], image["width"]) == SIZE
        anns = api.loadAnns(api.getAnnIds(imgIds=image["id"]))
        assert anns, f"image {image['id']} has no annotation"
        union = np.zeros(SIZE, np.int32)
        for ann in anns:
            assert ann["iscrowd"] == 0 and ann["category_id"] in {c["id"] for c in CATEGORIES}
            assert isinstance(ann["segmentation"]["counts"], str)
            mask = mask_utils.decode(ann["segmentation"])
            assert mask.shape == SIZE
            ys, xs = np.nonzero(mask)
            # Tight COCO box: [x, y, w, h] with x + w one past the last column.
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
            assert ann["area"] == mask.sum() == api.annToMask(ann).sum()
            union += mask
        assert union.max() == 1, "visible masks overlap"


def test_every_object_is_large_enough(dataset):
    data = load(dataset.train_annotations)
    min_area = shapes._MIN_AREA * SIZE[0] * SIZE[1]
    assert min(a["area"] for a in data["annotations"]) >= min_area


# ------------------------------------------------------------------------------------------ pixels vs masks

def grow(mask):
    """mask dilated by one pixel (4-neighbourhood)."""
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def boundary_agreement(image, masks):
    """Fractions of (inner boundary pixels near their shape's mean colour, outer ring pixels far from it), pooled
    over objects. 'Near' means within half the distance between the shape's mean colour and its ring's."""
    image = image.astype(np.float32)
    inner_near, inner_total, outer_far, outer_total = 0, 0, 0, 0
    for mask in masks:
        inner = mask & grow(~mask)  # mask pixels with a neighbour outside
        outer = grow(mask) & ~mask
        inside_mean = image[mask].mean(axis=0)
        half = np.linalg.norm(inside_mean - image[outer].mean(axis=0)) / 2
        inner_near += int((np.linalg.norm(image[inner] - inside_mean, axis=1) < half).sum())
        outer_far += int((np.linalg.norm(image[outer] - inside_mean, axis=1) >= half).sum())
        inner_total += int(inner.sum())
        outer_total += int(outer.sum())
    return inner_near / inner_total, outer_far / outer_total


def test_drawn_pixels_agree_with_masks():
    inner, outer, shifted_inner = [], [], []
    for index in range(10):
        image, objects = render_shapes_image(0, "val", index, SIZE)
        masks = [o["mask"] for o in objects]
        for mask in masks:
            # Every shape stands out from the ring of pixels around its visible part.
            ring = grow(grow(mask)) & ~mask
            contrast = np.linalg.norm(image[mask].mean(axis=0) - image[ring].astype(np.float32).mean(axis=0))
            assert contrast > 40
        a, b = boundary_agreement(image, masks)
        inner.append(a)
        outer.append(b)
        shifted_inner.append(boundary_agreement(image, [np.roll(m, 1, axis=1) for m in masks])[0])
    # With masks and pixels aligned, boundary pixels fall on the right side almost always...
    assert np.mean(inner) > 0.95 and np.mean(outer) > 0.9
    # ...and the check has the power to see a misalignment of a single pixel.
    assert np.mean(shifted_inner) < 0.85


# ------------------------------------------------------------------------------------------ ensure_shapes_dataset

def test_ensure_generates_only_when_needed(tmp_path, monkeypatch):
    root = str(tmp_path)
    args = {**SMALL, "num_train": 3, "num_val": 2}
    first = ensure_shapes_dataset(root, **args)
    assert os.path.isfile(os.path.join(root, "shapes.json"))
    assert len(load(first.train_annotations)["images"]) == 3

    calls = []
    real = shapes.generate_shapes_dataset

    def spy(*a, **k):
        calls.append(k)
        return real(*a, **k)

    monkeypatch.setattr(shapes, "generate_shapes_dataset", spy)
    assert ensure_shapes_dataset(root, **args) == first
    assert ensure_shapes_dataset(root, **args, progress=True) == first  # run-time options are no difference
    assert calls == []

    ensure_shapes_dataset(root, **{**args, "num_val": 3})  # other arguments
    assert len(calls) == 1 and len(load(first.val_annotations)["images"]) == 3
    ensure_shapes_dataset(root, **args)
    assert len(calls) == 2 and len(load(first.val_annotations)["images"]) == 2
    assert not os.path.exists(os.path.join(first.val_image_dir, "000003.jpg"))  # stale image removed

    os.remove(os.path.join(first.train_image_dir, "000002.jpg"))  # incomplete
    ensure_shapes_dataset(root, **args)
    assert len(calls) == 3 and os.path.isfile(os.path.join(first.train_image_dir, "000002.jpg"))

    os.remove(os.path.join(root, "shapes.json"))  # an interrupted generation
    ensure_shapes_dataset(root, **args)
    assert len(calls) == 4


# ------------------------------------------------------------------------------------------------ TFRecords

def test_tfrecords_hold_the_json(tmp_path):
    from tfrcnn.data.tfrecord import coco_from_tfrecords

    args = {**SMALL, "tfrecords": True, "num_shards": 2}
    ds = generate_shapes_dataset(str(tmp_path), **args)
    for split in ["train", "val"]:
        assert [os.path.basename(p) for p in shard_files(ds.tfrecords(split))] == [
            f"{split}-00000-of-00002.tfrecord", f"{split}-00001-of-00002.tfrecord"]
        want, got = load(ds.annotations(split)), coco_from_tfrecords(ds.tfrecords(split))
        assert sorted(i["id"] for i in got["images"]) == [i["id"] for i in want["images"]]
        # Objects keyed by (image, mask): the masks survive the PNG round trip bit for bit.
        objects = lambda data: {(a["image_id"], a["segmentation"]["counts"]): a for a in data["annotations"]}
        want_objects, got_objects = objects(want), objects(got)
        assert got_objects.keys() == want_objects.keys()
        for key, a in want_objects.items():
            assert got_objects[key]["category_id"] == a["category_id"]
            np.testing.assert_allclose(got_objects[key]["bbox"], a["bbox"], atol=1e-3)
    assert shapes.shapes_dataset_is_complete(str(tmp_path), **args)
    os.remove(shard_files(ds.val_tfrecords)[0])
    assert not shapes.shapes_dataset_is_complete(str(tmp_path), **args)
