import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from pycocotools.coco import COCO

from coco_fixtures import CATEGORY_IDS, ZERO_AREA_ANN_ID, write_coco
from tfrcnn.data import coco, tfrecord

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Model Garden's decoder spec (official/vision/dataloaders/tf_example_decoder.py), spelled out here independently
# of tfrcnn's constants so that a renamed key fails this test.
MODEL_GARDEN_SPEC = {
    "image/encoded": tf.io.FixedLenFeature((), tf.string),
    "image/height": tf.io.FixedLenFeature((), tf.int64, -1),
    "image/width": tf.io.FixedLenFeature((), tf.int64, -1),
    "image/source_id": tf.io.FixedLenFeature((), tf.string, ""),
    "image/object/bbox/xmin": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/xmax": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/ymin": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/ymax": tf.io.VarLenFeature(tf.float32),
    "image/object/class/label": tf.io.VarLenFeature(tf.int64),
    "image/object/area": tf.io.VarLenFeature(tf.float32),
    "image/object/is_crowd": tf.io.VarLenFeature(tf.int64),
    "image/object/mask": tf.io.VarLenFeature(tf.string),
}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("coco"))
    ann_path, image_dir, data = write_coco(root)
    report = tfrecord.create_coco_tfrecord(image_dir, ann_path, os.path.join(root, "tfrecord", "train"),
                                           num_shards=2, include_masks=True, progress=False)
    return root, ann_path, image_dir, data, report


def _records(files):
    return [r.numpy() for r in tf.data.TFRecordDataset(files)]


def test_shards_named_as_model_garden_and_every_image_written(converted):
    root, _, _, data, report = converted
    assert [os.path.basename(f) for f in report.files] == ["train-00000-of-00002.tfrecord",
                                                            "train-00001-of-00002.tfrecord"]
    assert all(os.path.exists(f) for f in report.files)
    # image i goes to shard i % 2, so file order 1, 3 | 2, 4
    ids = [[tf.train.Example.FromString(r).features.feature["image/source_id"].bytes_list.value[0]
            for r in _records([f])] for f in report.files]
    assert ids == [[b"1", b"3"], [b"2", b"4"]]
    assert report.num_images == 4  # the image without annotations too
    assert report.num_annotations == 6  # 7 minus the zero-area box (the crowd one is kept, flagged)


def test_skipped_and_clipped_annotations_are_named(converted):
    report = converted[4]
    assert report.skipped == [("annotation", f"{ZERO_AREA_ANN_ID} (image scène_1.png)",
                               "zero-area box [10.0, 10.0, 0.0, 5.0]")]
    assert report.clipped == ["14 (image scène_1.png)"]
    summary = report.summary()
    assert f"annotation {ZERO_AREA_ANN_ID} (image scène_1.png): zero-area box" in summary
    assert "Skipped: 0 image(s), 1 annotation(s):" in summary


def test_records_decode_with_model_garden_spec(converted):
    _, _, _, data, report = converted
    gt = COCO()
    gt.dataset = data
    gt.createIndex()
    for record in _records(report.files):
        f = tf.io.parse_single_example(record, MODEL_GARDEN_SPEC)
        image_id = int(f["image/source_id"].numpy())
        info = gt.imgs[image_id]
        h, w = info["height"], info["width"]
        assert (f["image/height"].numpy(), f["image/width"].numpy()) == (h, w)
        image = tf.io.decode_image(f["image/encoded"], expand_animations=False).numpy()
        assert image.shape[:2] == (h, w)
        anns = [a for a in gt.imgToAnns[image_id] if a["bbox"][2] > 0 and a["bbox"][3] > 0]
        dense = {k: tf.sparse.to_dense(v).numpy() for k, v in f.items() if isinstance(v, tf.SparseTensor)}
        assert list(dense["image/object/class/label"]) == [a["category_id"] for a in anns]
        assert list(dense["image/object/is_crowd"]) == [a["iscrowd"] for a in anns]
        np.testing.assert_allclose(dense["image/object/area"], [a["area"] for a in anns])
        for i, a in enumerate(anns):
            x, y, bw, bh = a["bbox"]
            expected = [min(x + bw, w) / w, max(x, 0) / w, min(y + bh, h) / h, max(y, 0) / h]
            got = [dense[f"image/object/bbox/{k}"][i] for k in ("xmax", "xmin", "ymax", "ymin")]
            np.testing.assert_allclose(got, expected, atol=1e-6)
            mask = np.asarray(Image.open(io.BytesIO(dense["image/object/mask"][i])))
            assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 1}
            np.testing.assert_array_equal(mask, gt.annToMask(a))


def test_mask_rasterization_by_kind(converted):
    data = converted[3]
    anns = {a["id"]: a for a in data["annotations"]}
    # multi-polygon: two squares, the union of both
    m = coco.annotation_mask(anns[12]["segmentation"], 48, 64)
    assert m[30, 5] == 1 and m[38, 25] == 1 and m[30, 25] == 0
    # crowd RLE (uncompressed counts): exactly the rectangle it was made from
    m = coco.annotation_mask(anns[13]["segmentation"], 48, 64)
    assert m.sum() == 15 * 20 and m[5:20, 40:60].all()
    with pytest.raises(ValueError, match="fewer than 3 points"):
        coco.annotation_mask([[1, 2, 3, 4]], 10, 10)


def test_coco_from_tfrecords_matches_the_json(converted):
    _, _, _, data, report = converted
    gt = tfrecord.coco_from_tfrecords(report.files[0].replace("00000-of", "*-of"))
    assert sorted(i["id"] for i in gt["images"]) == [1, 2, 3, 4]
    assert [c["id"] for c in gt["categories"]] == CATEGORY_IDS
    assert {c["name"] for c in gt["categories"]} == {"trois", "dix-sept", "quarante-deux"}
    reference = COCO()
    reference.dataset = data
    reference.createIndex()
    by_image = {}
    for a in gt["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    for image_id, anns in by_image.items():
        expected = [a for a in reference.imgToAnns[image_id] if a["bbox"][2] > 0 and a["bbox"][3] > 0]
        assert [a["iscrowd"] for a in anns] == [a["iscrowd"] for a in expected]
        for a, e in zip(anns, expected):
            np.testing.assert_array_equal(reference.annToMask(dict(e, image_id=image_id)),
                                          reference.annToMask(dict(e, segmentation=a["segmentation"])))


def test_hand_built_model_garden_example_parses(tmp_path):
    """An Example as Model Garden's converter writes it (format 'jpg', no is_crowd / area / size keys is also
    allowed by its decoder) parses into the same fields."""
    buf = io.BytesIO()
    Image.fromarray(np.full((20, 30, 3), 128, np.uint8)).save(buf, format="JPEG")
    feature = {
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[buf.getvalue()])),
        "image/format": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"jpg"])),
        "image/source_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"7"])),
        "image/object/bbox/xmin": tf.train.Feature(float_list=tf.train.FloatList(value=[0.1])),
        "image/object/bbox/xmax": tf.train.Feature(float_list=tf.train.FloatList(value=[0.5])),
        "image/object/bbox/ymin": tf.train.Feature(float_list=tf.train.FloatList(value=[0.2])),
        "image/object/bbox/ymax": tf.train.Feature(float_list=tf.train.FloatList(value=[0.6])),
        "image/object/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[17])),
    }
    record = tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
    ex = tfrecord.parse_example(record)
    assert int(ex["height"]) == -1 and ex["source_id"].numpy() == b"7"
    np.testing.assert_allclose(ex["boxes"].numpy(), [[0.2, 0.1, 0.6, 0.5]])
    assert ex["is_crowd"].numpy().tolist() == [0] and ex["labels"].numpy().tolist() == [17]


@pytest.mark.parametrize("content, message", [
    ("[1, 2]", "the top level is a list"),
    ("<annotation><object/></annotation>", "not JSON"),
    ('{"images": [], "annotations": []}', "lacks the key(s) 'categories'"),
    ('{"images": [{"id": 1, "file_name": "a.jpg", "height": 0, "width": 3}], "annotations": [], "categories": []}',
     "images[0] (id 1): 'height' is 0"),
    ('{"images": [{"id": 1, "file_name": "a.jpg", "height": 2, "width": 3}], "categories": [{"id": 1, "name": "a"}],'
     ' "annotations": [{"id": 5, "image_id": 2, "category_id": 1, "bbox": [0, 0, 1, 1]}]}',
     "annotations[0] (id 5): image_id 2 is not in 'images'"),
    ('{"images": [], "categories": [{"id": 1, "name": "a"}, {"id": 1, "name": "b"}], "annotations": []}',
     "categories[1]: id 1 appears twice"),
])
def test_not_coco_is_one_named_error(tmp_path, content, message):
    path = tmp_path / "instances.json"
    path.write_text(content)
    with pytest.raises(coco.CocoFormatError) as info:
        coco.load_coco(str(path))
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)


def test_script_reports_bad_annotation_file_in_one_line(tmp_path):
    path = tmp_path / "labels.xml"
    path.write_text("<annotation><object/></annotation>")
    out = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "create_coco_tfrecord.py"), "--image_dir", str(tmp_path),
         "--object_annotations_file", str(path), "--output_file_prefix", str(tmp_path / "out" / "x")],
        capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), timeout=120)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {path}: not a COCO annotation file: not JSON "
                      "(Expecting value: line 1 column 1 (char 0))"]


def test_script_converts_and_prints_the_summary(tmp_path):
    ann_path, image_dir, data = write_coco(str(tmp_path))
    # Boxes no converter may write: NaN and inf (JSON's NaN / Infinity, which Python's json reads) and a negative
    # width. Each is skipped and named for what it is, not "clipped" nor "zero-area".
    first = data["annotations"][0]
    bad = {101: [float("nan"), 2.0, 5.0, 5.0], 102: [2.0, 2.0, float("inf"), 5.0], 103: [20.0, 2.0, -6.0, 5.0]}
    data["annotations"] += [dict(first, id=i, bbox=b, area=25.0) for i, b in bad.items()]
    with open(ann_path, "w") as f:
        json.dump(data, f)
    out = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "create_coco_tfrecord.py"), "--image_dir", image_dir,
         "--object_annotations_file", ann_path, "--output_file_prefix", str(tmp_path / "tf" / "val"),
         "--num_shards", "1", "--include_masks", "--num_processes", "2"],
        capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Wrote 4 images and 6 annotations to 1 shard(s)" in out.stdout
    assert f"annotation {ZERO_AREA_ANN_ID} (image scène_1.png): zero-area box" in out.stdout
    image = next(i["file_name"] for i in data["images"] if i["id"] == first["image_id"])
    assert f"annotation 101 (image {image}): a NaN or infinite coordinate in box [nan, 2.0, 5.0, 5.0]" in out.stdout
    assert f"annotation 102 (image {image}): a NaN or infinite coordinate in box [2.0, 2.0, inf, 5.0]" in out.stdout
    assert f"annotation 103 (image {image}): negative width or height in box [20.0, 2.0, -6.0, 5.0]" in out.stdout
    assert "Skipped: 0 image(s), 4 annotation(s):" in out.stdout and "Clipped to the image border (kept): 1 " in out.stdout
    assert "4/4 images" in out.stderr  # the progress bar
    assert len(_records([str(tmp_path / "tf" / "val-00000-of-00001.tfrecord")])) == 4


def test_missing_and_unreadable_images_are_skipped_by_name(tmp_path):
    ann_path, image_dir, data = write_coco(str(tmp_path))
    os.remove(os.path.join(image_dir, "gray.png"))
    with open(os.path.join(image_dir, "rgba.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\nnot really")
    report = tfrecord.create_coco_tfrecord(image_dir, ann_path, str(tmp_path / "x"), progress=False)
    kinds = {(kind, name): reason for kind, name, reason in report.skipped}
    assert kinds[("image", "gray.png (id 2)")].startswith("cannot read")
    assert kinds[("image", "rgba.png (id 3)")].startswith("unreadable image")
    assert report.num_images == 2
