import io
import os
import re

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from pycocotools.coco import COCO

from coco_fixtures import CATEGORY_IDS, crop_reference, write_coco
from tfrcnn import structures
from tfrcnn.config import Config
from tfrcnn.data import pipeline, tfrecord
from tfrcnn.inference import Transform

CROP = 16
MEAN, STD = np.array([123.675, 116.28, 103.53]), np.array([58.395, 57.12, 57.375])


def make_config(train, val=None, with_mask=True, **data):
    data = {"img_scale": [96, 64], "pad_size": [96, 96], "max_instances": 6, "mask_crop_size": CROP,
            "samples_per_gpu": 2, "category_ids": CATEGORY_IDS, "classes": None, "train": train,
            "val": val or {k: v for k, v in train.items() if k != "filter_empty_gt"}, **data}
    roi_head = {"bbox_head": {"num_classes": 3}, "mask_head": {"num_classes": 3}}
    model = {"roi_head": roi_head}
    if not with_mask:
        model = {"type": "FasterRCNN", "roi_head": dict(roi_head, mask_head=None, mask_roi_extractor=None)}
    return Config.from_dict({"model": model, "evaluation": {"metric": ["bbox"]}, "data": data})


def resized(h, w):
    """The eval size at img_scale (96, 64): factor min(96 / long, 64 / short), sides rounded half up."""
    factor = min(96 / max(h, w), 64 / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("coco"))
    ann_path, image_dir, data = write_coco(root)
    prefix = os.path.join(root, "tfrecord", "train")
    tfrecord.create_coco_tfrecord(image_dir, ann_path, prefix, num_shards=2, include_masks=True, progress=False)
    gt = COCO()
    gt.dataset = data
    gt.createIndex()
    return {"ann_file": ann_path, "img_prefix": image_dir, "tfrecord": prefix + "-*", "gt": gt, "root": root}


def unbatch(ds):
    """Per-image numpy dicts (image + targets) keyed by source id."""
    out = {}
    for images, targets in ds:
        for i in range(images.shape[0]):
            item = {k: v[i].numpy() for k, v in targets.items()}
            item["image"] = images[i].numpy()
            out[int(item["source_id"])] = item
    return out


def expected_targets(gt, image_id, scale, flip_width=None):
    """The JSON's objects in batch form: clipped, rescaled boxes; classes 1..3; crowd boxes apart; mask crops."""
    info = gt.imgs[image_id]
    h, w = info["height"], info["width"]
    boxes, classes, masks, ignore = [], [], [], []
    for a in gt.imgToAnns[image_id]:
        x, y, bw, bh = a["bbox"]
        box = np.array([max(y, 0), max(x, 0), min(y + bh, h), min(x + bw, w)], np.float64)
        if box[2] <= box[0] or box[3] <= box[1]:
            continue
        crop = crop_reference(gt.annToMask(a), box, CROP)
        box = box * [scale[0], scale[1], scale[0], scale[1]]
        if flip_width is not None:
            box = np.array([box[0], flip_width - box[3], box[2], flip_width - box[1]])
            crop = crop[:, ::-1]
        if a["iscrowd"]:
            ignore.append(box)
        else:
            boxes.append(box)
            classes.append(CATEGORY_IDS.index(a["category_id"]) + 1)
            masks.append(crop)
    return boxes, classes, masks, ignore


def check_image(item, gt, image_id, scale, flip_width=None):
    boxes, classes, masks, ignore = expected_targets(gt, image_id, scale, flip_width)
    n, k = len(boxes), len(ignore)
    np.testing.assert_allclose(item["gt_boxes"][:n], np.reshape(boxes, (n, 4)), atol=2e-4)
    assert not item["gt_boxes"][n:].any() and not item["gt_classes"][n:].any()
    assert item["gt_classes"][:n].tolist() == classes
    np.testing.assert_allclose(item["gt_masks"][:n], np.reshape(masks, (n, CROP, CROP)), atol=2e-4)
    assert 0.0 <= item["gt_masks"].min() and item["gt_masks"].max() <= 1.0
    np.testing.assert_allclose(item["ignore_boxes"][:k], np.reshape(ignore, (k, 4)), atol=2e-4)
    assert not item["ignore_boxes"][k:].any()


@pytest.mark.parametrize("source", ["tfrecord", "json"])
def test_round_trip_eval_batches_equal_the_json_rescaled(dataset, source):
    split = {"tfrecord": dataset["tfrecord"]} if source == "tfrecord" else {
        "ann_file": dataset["ann_file"], "img_prefix": dataset["img_prefix"]}
    cfg = make_config(split)
    items = unbatch(pipeline.build_dataset(cfg, "val", training=False))
    assert sorted(items) == [1, 2, 3, 4]  # the image without annotations is evaluated too
    gt = dataset["gt"]
    for image_id, item in items.items():
        h, w = gt.imgs[image_id]["height"], gt.imgs[image_id]["width"]
        new = resized(h, w)
        assert tuple(item["image_size"]) == new and tuple(item["original_size"]) == (h, w)
        scale = (new[0] / h, new[1] / w)
        np.testing.assert_allclose(item["scale"], scale, rtol=1e-6)
        check_image(item, gt, image_id, scale)
        # padding is zero after normalization
        assert not item["image"][new[0]:].any() and not item["image"][:, new[1]:].any()


def test_decoded_pixels_gray_and_rgba_become_rgb(dataset):
    cfg = make_config({"tfrecord": dataset["tfrecord"]})
    items = unbatch(pipeline.build_dataset(cfg, "val", training=False))
    for image_id, name in [(2, "gray.png"), (3, "rgba.png"), (1, "scène_1.png")]:
        rgb = np.asarray(Image.open(os.path.join(dataset["img_prefix"], name)).convert("RGB"), np.float32)
        h, w = items[image_id]["image_size"]
        expected = tf.image.resize(rgb, (h, w)).numpy()
        got = items[image_id]["image"][:h, :w] * STD + MEAN
        np.testing.assert_allclose(got, expected, atol=1e-3)


def test_training_flip_and_static_shapes(dataset):
    cfg = make_config({"tfrecord": dataset["tfrecord"], "filter_empty_gt": False}, flip_ratio=1.0)
    ds = pipeline.build_dataset(cfg, "train", training=True)
    spec = ds.element_spec
    assert spec[0].shape == (2, 96, 96, 3)
    assert spec[1][structures.GT_BOXES].shape == (2, 6, 4) and spec[1][structures.GT_MASKS].shape == (2, 6, CROP, CROP)
    assert structures.SOURCE_ID not in spec[1]
    seen = 0
    gt = dataset["gt"]
    for images, targets in ds:
        for i in range(2):
            size = targets["image_size"][i].numpy()
            # training batches carry no source id: the four images have distinct resized sizes
            match = [j for j in gt.imgs if resized(gt.imgs[j]["height"], gt.imgs[j]["width"]) == tuple(size)]
            assert len(match) == 1
            info = gt.imgs[match[0]]
            scale = (size[0] / info["height"], size[1] / info["width"])
            item = {k: v[i].numpy() for k, v in targets.items()}
            check_image(item, gt, match[0], scale, flip_width=size[1])
            seen += 1
    assert seen == 4  # 4 images, batches of 2, none dropped


def test_filter_empty_gt_and_drop_remainder(dataset):
    cfg = make_config({"tfrecord": dataset["tfrecord"]}, samples_per_gpu=2)
    batches = list(pipeline.build_dataset(cfg, "train", training=True))
    # image 4 has no gt: 3 images left, one full batch of 2, the last image dropped
    assert len(batches) == 1 and batches[0][0].shape[0] == 2


def test_multiscale_range_and_value(dataset):
    cfg = make_config({"tfrecord": dataset["tfrecord"], "filter_empty_gt": False}, img_scale=[[200, 32], [200, 64]], pad_size=[128, 128],
                      samples_per_gpu=1, flip_ratio=0.0)
    ds = pipeline.build_dataset(cfg, "train", training=True)
    sizes = {}
    for _ in range(6):
        for images, targets in ds:
            h, w = targets["image_size"][0].numpy()
            sizes.setdefault((h, w), 0)
            sizes[(h, w)] += 1
    shorts = {min(s) for s in sizes}
    # the short side is drawn in [32, 64] (the long side limit 200 is nor the pad 128: aspect ratios are below 2)
    assert min(shorts) >= 32 and max(shorts) <= 64 and len(shorts) > 4
    evaluated = unbatch(pipeline.build_dataset(cfg, "val", training=False))
    assert {int(min(item["image_size"])) for item in evaluated.values()} == {64}  # evaluation: the largest scale
    cfg = make_config({"tfrecord": dataset["tfrecord"], "filter_empty_gt": False}, img_scale=[[200, 32], [200, 64]], pad_size=[128, 128],
                      multiscale_mode="value", samples_per_gpu=1, flip_ratio=0.0)
    shorts = set()
    for _ in range(4):
        for _, targets in pipeline.build_dataset(cfg, "train", training=True):
            shorts.add(int(min(targets["image_size"][0].numpy())))
    assert shorts == {32, 64}


def test_training_order_is_reproducible_and_changes_by_epoch(dataset):
    cfg = make_config({"tfrecord": dataset["tfrecord"], "filter_empty_gt": False}, samples_per_gpu=1,
                      img_scale=[[200, 32], [200, 64]], pad_size=[128, 128])
    def run():
        ds = pipeline.build_dataset(cfg, "train", training=True)
        return [[(int(t["image_size"][0, 0]), float(t["gt_boxes"][0, 0, 1])) for _, t in ds] for _ in range(3)]
    first, second = run(), run()
    assert first == second
    assert first[0] != first[1] or first[1] != first[2]


def test_caffe_style_bgr_normalization(dataset):
    cfg = make_config({"tfrecord": dataset["tfrecord"]},
                      img_norm_cfg={"mean": [103.53, 116.28, 123.675], "std": [1.0, 1.0, 1.0], "to_rgb": False})
    items = unbatch(pipeline.build_dataset(cfg, "val", training=False))
    rgb = np.asarray(Image.open(os.path.join(dataset["img_prefix"], "rgba.png")).convert("RGB"), np.float32)
    h, w = items[3]["image_size"]
    expected = tf.image.resize(rgb, (h, w)).numpy()[..., ::-1] - [103.53, 116.28, 123.675]
    np.testing.assert_allclose(items[3]["image"][:h, :w], expected, atol=1e-3)


def test_category_subset_drops_other_categories_and_max_instances_cuts(dataset):
    cfg = Config.from_dict({
        "model": {"roi_head": {"bbox_head": {"num_classes": 1}, "mask_head": {"num_classes": 1}}},
        "data": {"img_scale": [96, 64], "pad_size": [96, 96], "max_instances": 1, "mask_crop_size": CROP,
                 "category_ids": [3], "classes": ["trois"], "train": {"tfrecord": dataset["tfrecord"]},
                 "val": {"tfrecord": dataset["tfrecord"]}}})
    items = unbatch(pipeline.build_dataset(cfg, "val", training=False))
    # image 1 holds two category-3 objects (ids 12 and 14): max_instances 1 keeps the first
    assert items[1]["gt_classes"].tolist() == [1]
    np.testing.assert_allclose(items[1]["gt_boxes"][0] / np.tile(items[1]["scale"], 2), [26, 2, 44, 32], atol=1e-3)
    assert items[2]["gt_classes"].tolist() == [0]  # its only object is category 42


def test_per_worker_sharding_splits_the_images(dataset):
    cfg = make_config({"tfrecord": dataset["tfrecord"]}, samples_per_gpu=1)
    seen = []
    for index in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=index)
        seen.append(sorted(unbatch(pipeline.build_dataset(cfg, "val", training=False, input_context=context))))
    assert seen == [[1, 3], [2, 4]]  # the two shards, one per worker
    seen = []
    for index in range(3):  # more workers than shards: records are split instead
        context = tf.distribute.InputContext(num_input_pipelines=3, input_pipeline_id=index)
        seen += list(unbatch(pipeline.build_dataset(cfg, "val", training=False, input_context=context)))
    assert sorted(seen) == [1, 2, 3, 4]


def _example(source_id, encoded):
    feature = {
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
        "image/source_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[source_id.encode()])),
        "image/filename": tf.train.Feature(bytes_list=tf.train.BytesList(value=[f"{source_id}.jpg".encode()])),
        "image/object/bbox/xmin": tf.train.Feature(float_list=tf.train.FloatList(value=[0.25])),
        "image/object/bbox/xmax": tf.train.Feature(float_list=tf.train.FloatList(value=[0.75])),
        "image/object/bbox/ymin": tf.train.Feature(float_list=tf.train.FloatList(value=[0.5])),
        "image/object/bbox/ymax": tf.train.Feature(float_list=tf.train.FloatList(value=[1.0])),
        "image/object/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[17])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _with_mask(serialized):
    """The record with one full-image 0/1 PNG mask per object (as --include_masks writes)."""
    example = tf.train.Example.FromString(serialized)
    png = tf.io.encode_png(tf.ones([32, 48, 1], tf.uint8)).numpy()
    example.features.feature["image/object/mask"].bytes_list.value.append(png)
    return example.SerializeToString()


def _jpeg(h, w, value):
    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture
def records_with_corrupt_image(tmp_path):
    path = str(tmp_path / "mixed-00000-of-00001.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        writer.write(_example("101", _jpeg(32, 48, 50)))
        writer.write(_example("102", b"\xff\xd8\xff\xe0 this is not a JPEG"))
        writer.write(_example("103", _jpeg(40, 20, 200)))
    return path


def test_corrupt_image_is_skipped_named_and_counted(records_with_corrupt_image):
    cfg = make_config({"tfrecord": records_with_corrupt_image, "filter_empty_gt": False}, with_mask=False,
                      samples_per_gpu=1, max_instances=2)
    corrupt = pipeline.CorruptImages()
    items = unbatch(pipeline.build_dataset(cfg, "val", training=False, corrupt_images=corrupt))
    assert sorted(items) == [101, 103]
    assert corrupt == [f"source_id 102 (102.jpg) in {records_with_corrupt_image}"]
    # a Model Garden-style example (no height/width/area/is_crowd) goes through: box of 103 (40x20 image)
    np.testing.assert_allclose(items[103]["gt_boxes"][0] / np.tile(items[103]["scale"], 2), [20, 5, 40, 15],
                               atol=1e-3)
    assert items[103]["gt_classes"].tolist() == [2, 0]
    corrupt.clear()
    batches = list(pipeline.build_dataset(cfg, "train", training=True, corrupt_images=corrupt))
    assert len(batches) == 2 and len(corrupt) == 1


def test_corrupt_image_stops_with_its_name_when_configured(records_with_corrupt_image):
    cfg = make_config({"tfrecord": records_with_corrupt_image}, with_mask=False, samples_per_gpu=1,
                      corrupt_images="error")
    with pytest.raises(tf.errors.InvalidArgumentError, match="corrupt image.*source_id 102 \\(102.jpg\\)"):
        list(pipeline.build_dataset(cfg, "val", training=False))
    # what scripts show: input_errors makes it one line, without TensorFlow's graph context
    with pytest.raises(ValueError) as raised, pipeline.input_errors():
        list(pipeline.build_dataset(cfg, "val", training=False))
    assert str(raised.value) == (f"{records_with_corrupt_image}: corrupt image source_id 102 (102.jpg): it does not "
                                 "decode (data.corrupt_images: error; with skip, each such image is left out and named)")


def test_mask_model_refuses_records_without_masks(records_with_corrupt_image):
    cfg = make_config({"tfrecord": records_with_corrupt_image}, samples_per_gpu=1)
    # found from the first record with objects, before any dataset is built
    with pytest.raises(ValueError, match=f"^{re.escape(records_with_corrupt_image)}: the model has a mask head but "
                                         "this shard has no masks \\(source_id 101: .*--include_masks, or train a "
                                         "Faster R-CNN config$"):
        pipeline.build_dataset(cfg, "val", training=False)
    # records that do not all hold masks are stopped by the pipeline's own check, named by input_errors
    path = records_with_corrupt_image.replace("mixed", "partly_masked")
    with tf.io.TFRecordWriter(path) as writer:
        writer.write(_with_mask(_example("101", _jpeg(32, 48, 50))))
        writer.write(_example("103", _jpeg(40, 20, 200)))
    cfg = make_config({"tfrecord": path}, samples_per_gpu=1)
    with pytest.raises(ValueError, match=f"^{re.escape(path)}: source_id 103 has 1 objects but 0 masks, and the "
                                         "model has a mask head: convert the dataset again"), pipeline.input_errors():
        list(pipeline.build_dataset(cfg, "val", training=False))


def test_a_damaged_shard_is_named(tmp_path, records_with_corrupt_image):
    damaged = tmp_path / "cut-00000-of-00001.tfrecord"
    damaged.write_bytes(open(records_with_corrupt_image, "rb").read()[:-10])
    cfg = make_config({"tfrecord": f"{records_with_corrupt_image},{damaged}"}, with_mask=False)
    with pytest.raises(ValueError, match=f"^{re.escape(str(damaged))}: a damaged TFRecord shard, truncated record at "
                                         "\\d+: Read less bytes than requested"):
        pipeline.count_images(cfg, "train")


def test_batches_train_a_detector(dataset):
    """The pipeline's output is exactly what the models' train_step takes: one step of a tiny Mask R-CNN."""
    import tfrcnn
    from tfrcnn.config import load_config
    cfg = load_config(os.path.join(os.path.dirname(__file__), "..", "modeling", "configs", "mask_rcnn_r18_tiny.yaml"))
    d = cfg.to_dict()
    d["model"]["roi_head"]["bbox_head"]["num_classes"] = d["model"]["roi_head"]["mask_head"]["num_classes"] = 3
    d["data"].update(img_scale=[128, 128], pad_size=[128, 128], max_instances=8, category_ids=CATEGORY_IDS, classes=None,
                     train={"tfrecord": dataset["tfrecord"], "filter_empty_gt": True})
    cfg = Config.from_dict(d)
    model = tfrcnn.build_model(cfg, build_size=(128, 128))
    model.compile(optimizer="sgd")
    images, targets = next(iter(pipeline.build_dataset(cfg, "train", training=True)))
    logs = model.train_on_batch(images, targets, return_dict=True)
    assert np.isfinite(logs["loss"]) and logs["loss"] > 0


def test_eval_batches_fed_back_as_detections_score_ap_1(dataset):
    """Evaluation batches carry what the evaluator needs to map detections back to the original images: the gt
    of each batch, given as the model's output, scores AP 1 against the TFRecords' own ground truth."""
    from tfrcnn.evaluation import CocoEvaluator
    cfg = make_config({"tfrecord": dataset["tfrecord"]})
    gt = tfrecord.coco_from_tfrecords(dataset["tfrecord"])
    evaluator = CocoEvaluator(gt, category_ids=CATEGORY_IDS)
    for images, targets in pipeline.build_dataset(cfg, "val", training=False):
        classes = targets["gt_classes"]
        evaluator.add_batch({"detection_boxes": targets["gt_boxes"], "detection_classes": classes,
                             "detection_scores": tf.cast(classes > 0, tf.float32),
                             "num_detections": tf.reduce_sum(tf.cast(classes > 0, tf.int32), axis=1),
                             "detection_masks": targets["gt_masks"]}, targets)
    metrics = evaluator.evaluate()
    # masks pasted back from 16x16 crops lose a little at the triangles' edges, never a whole IoU step
    assert metrics["bbox"]["AP"] == pytest.approx(1.0, abs=1e-9)
    assert metrics["segm"]["AP"] == pytest.approx(1.0, abs=1e-9)


def _png(array):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def test_model_garden_example_with_masks_goes_through_the_pipeline(tmp_path):
    """An Example written the way Model Garden's create_coco_tf_record.py writes it (format 'jpg', sha256 key,
    class text, crowd flags, areas, one full-image 0/1 PNG per object), built here by hand, feeds a Mask R-CNN."""
    h, w = 40, 60
    image = np.zeros((h, w, 3), np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[10:30, 12:36] = 1  # a 20x24 rectangle: box x 12..36, y 10..30
    crowd = np.zeros((h, w), np.uint8)
    crowd[0:8, 40:60] = 1
    ints = lambda v: tf.train.Feature(int64_list=tf.train.Int64List(value=v))
    floats = lambda v: tf.train.Feature(float_list=tf.train.FloatList(value=v))
    strings = lambda v: tf.train.Feature(bytes_list=tf.train.BytesList(value=v))
    feature = {
        "image/height": ints([h]), "image/width": ints([w]),
        "image/filename": strings([b"000000000042.jpg"]), "image/source_id": strings([b"42"]),
        "image/key/sha256": strings([b"0" * 64]), "image/encoded": strings([_png(image)]),
        "image/format": strings([b"jpg"]),  # Model Garden writes 'jpg' whatever the bytes are
        "image/object/bbox/xmin": floats([12 / w, 40 / w]), "image/object/bbox/xmax": floats([36 / w, 1.0]),
        "image/object/bbox/ymin": floats([10 / h, 0.0]), "image/object/bbox/ymax": floats([30 / h, 8 / h]),
        "image/object/class/text": strings([b"dix-sept", b"trois"]),
        "image/object/class/label": ints([17, 3]), "image/object/is_crowd": ints([0, 1]),
        "image/object/area": floats([480.0, 160.0]), "image/object/mask": strings([_png(mask), _png(crowd)]),
    }
    path = str(tmp_path / "mg-00000-of-00001.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    item = unbatch(pipeline.build_dataset(make_config({"tfrecord": path}, samples_per_gpu=1), "val",
                                          training=False))[42]
    scale = item["scale"]  # (64 / 40, 96 / 60) = (1.6, 1.6)
    np.testing.assert_allclose(scale, [1.6, 1.6])
    np.testing.assert_allclose(item["gt_boxes"][0], [16, 19.2, 48, 57.6], atol=1e-4)
    assert item["gt_classes"].tolist() == [2, 0, 0, 0, 0, 0]
    np.testing.assert_allclose(item["ignore_boxes"][0], [0, 64, 12.8, 96], atol=1e-4)
    np.testing.assert_allclose(item["gt_masks"][0], np.ones((CROP, CROP)), atol=1e-6)  # the mask fills its box


def test_preprocess_for_inference_is_the_eval_batch(dataset):
    """Exported models preprocess with inference.Transform: it must give the evaluation batch's image."""
    cfg = make_config({"tfrecord": dataset["tfrecord"]}, img_norm_cfg={"mean": [1, 2, 3], "std": [4, 5, 6],
                                                                      "to_rgb": False})
    items = unbatch(pipeline.build_dataset(cfg, "val", training=False))
    for image_id, name in [(1, "scène_1.png"), (2, "gray.png")]:
        rgb = np.asarray(Image.open(os.path.join(dataset["img_prefix"], name)).convert("RGB"))
        image, size, scale = Transform(cfg.data).preprocess(tf.constant(rgb))
        np.testing.assert_array_equal(size.numpy(), items[image_id]["image_size"])
        np.testing.assert_array_equal(scale.numpy(), items[image_id]["scale"])
        np.testing.assert_allclose(image.numpy(), items[image_id]["image"], atol=1e-5)


def test_count_images(dataset):
    cfg = make_config({"tfrecord": dataset["tfrecord"]})
    assert pipeline.count_images(cfg, "train", training=True) == 3  # image 4 has no gt
    assert pipeline.count_images(cfg, "val", training=False) == 4


def test_size_divisor_eval_batches_pad_each_batch_to_its_largest_image(dataset):
    cfg = make_config({"tfrecord": dataset["tfrecord"]}, test_padding="size_divisor", size_divisor=32,
                      samples_per_gpu=4)
    images, targets = next(iter(pipeline.build_dataset(cfg, "val", training=False)))
    sizes = targets["image_size"].numpy()
    expected = -(-sizes.max(axis=0) // 32) * 32
    assert tuple(images.shape[1:3]) == tuple(expected)


def test_read_images_decodes_the_asked_images_only(dataset):
    from PIL import Image

    config = make_config({"tfrecord": dataset["tfrecord"]})
    images = pipeline.read_images(config, "train", [3, 1, 99])  # 99: no such image, simply absent
    assert sorted(images) == [1, 3]
    for image_id, name in ((1, "scène_1.png"), (3, "rgba.png")):
        with Image.open(os.path.join(dataset["img_prefix"], name)) as picture:
            np.testing.assert_array_equal(images[image_id], np.asarray(picture.convert("RGB")))
    # from ann_file + img_prefix as well; the gray image comes back as RGB
    config = make_config({"ann_file": dataset["ann_file"], "img_prefix": dataset["img_prefix"]})
    assert pipeline.read_images(config, "val", [2])[2].shape == (40, 30, 3)


def test_training_batches_keep_source_ids_when_asked(dataset):
    config = make_config({"tfrecord": dataset["tfrecord"], "filter_empty_gt": True})
    _, targets = next(iter(pipeline.build_dataset(config, "train", training=True, keep_source_id=True)))
    assert set(targets["source_id"].numpy().astype(int)) <= {1, 2, 3}
    _, targets = next(iter(pipeline.build_dataset(config, "train", training=True)))
    assert "source_id" not in targets
