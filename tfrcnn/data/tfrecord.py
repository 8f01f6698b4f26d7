"""COCO ↔ TFRecord with TF Model Garden's feature keys, so datasets move between the two projects both ways.

One `tf.train.Example` per image, as Model Garden's `official/vision/data/create_coco_tf_record.py` writes it:
the original encoded image bytes, its size, `source_id` = str(COCO image id), and per object its box
normalized to [0, 1] by the image size (`image/object/bbox/{xmin,xmax,ymin,ymax}`), the raw COCO category id
(`class/label`) and name (`class/text`), `is_crowd`, `area`, and with masks one full-image PNG (values 0/1) per
object.
"""
import dataclasses
import glob
import hashlib
import io
import math
import multiprocessing
import os
import sys

import numpy as np
import tensorflow as tf
from PIL import Image

from tfrcnn.data import coco

# Model Garden's keys (official/vision/data/create_coco_tf_record.py, tf_example_decoder.py).
HEIGHT, WIDTH = "image/height", "image/width"
FILENAME, SOURCE_ID, KEY_SHA256 = "image/filename", "image/source_id", "image/key/sha256"
ENCODED, FORMAT = "image/encoded", "image/format"
XMIN, XMAX = "image/object/bbox/xmin", "image/object/bbox/xmax"
YMIN, YMAX = "image/object/bbox/ymin", "image/object/bbox/ymax"
CLASS_TEXT, CLASS_LABEL = "image/object/class/text", "image/object/class/label"
IS_CROWD, AREA, MASK = "image/object/is_crowd", "image/object/area", "image/object/mask"

# How Model Garden's decoder reads them: every key but the image is optional.
FEATURE_SPEC = {
    ENCODED: tf.io.FixedLenFeature((), tf.string),
    SOURCE_ID: tf.io.FixedLenFeature((), tf.string, ""),
    FILENAME: tf.io.FixedLenFeature((), tf.string, ""),
    HEIGHT: tf.io.FixedLenFeature((), tf.int64, -1),
    WIDTH: tf.io.FixedLenFeature((), tf.int64, -1),
    XMIN: tf.io.VarLenFeature(tf.float32),
    XMAX: tf.io.VarLenFeature(tf.float32),
    YMIN: tf.io.VarLenFeature(tf.float32),
    YMAX: tf.io.VarLenFeature(tf.float32),
    CLASS_LABEL: tf.io.VarLenFeature(tf.int64),
    CLASS_TEXT: tf.io.VarLenFeature(tf.string),
    IS_CROWD: tf.io.VarLenFeature(tf.int64),
    AREA: tf.io.VarLenFeature(tf.float32),
    MASK: tf.io.VarLenFeature(tf.string),
}


def shard_paths(prefix, num_shards):
    """Model Garden's shard names: `{prefix}-%05d-of-%05d.tfrecord`."""
    return [f"{prefix}-{i:05d}-of-{num_shards:05d}.tfrecord" for i in range(num_shards)]


def _feature(values, kind):
    if kind is bytes:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
    if kind is int:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))
    return tf.train.Feature(float_list=tf.train.FloatList(value=values))


@dataclasses.dataclass
class ConversionReport:
    """What `create_coco_tfrecord` wrote and what it left out, each left-out item named."""
    files: list
    num_images: int = 0
    num_annotations: int = 0
    skipped: list = dataclasses.field(default_factory=list)  # (kind, name, reason): kind 'image' | 'annotation'
    clipped: list = dataclasses.field(default_factory=list)  # annotation names whose box crossed the border

    def summary(self):
        lines = [f"Wrote {self.num_images} images and {self.num_annotations} annotations to {len(self.files)} "
                 f"shard(s): {self.files[0] if len(self.files) == 1 else self.files[0] + ' ...'}"]
        if self.clipped:
            lines.append(f"Clipped to the image border (kept): {len(self.clipped)} box(es): "
                         + ", ".join(self.clipped[:20]) + (" ..." if len(self.clipped) > 20 else ""))
        images = [s for s in self.skipped if s[0] == "image"]
        annotations = [s for s in self.skipped if s[0] == "annotation"]
        lines.append(f"Skipped: {len(images)} image(s), {len(annotations)} annotation(s)"
                     + (":" if self.skipped else "."))
        lines += [f"  {kind} {name}: {reason}" for kind, name, reason in self.skipped]
        return "\n".join(lines)


def _image_format(data):
    """'jpeg' or 'png' for bytes TF decodes as they are; None for anything else."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    return None


def _png(array):
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def convert_image(image, annotations, image_dir, include_masks):
    """One COCO image and its annotations → (serialized Example or None, kept count, skipped, clipped).

    The image is skipped (None) when its file is missing or does not decode, or its size differs from the
    JSON's; an annotation when its box has a NaN or infinite coordinate, a negative or zero side, or no area
    inside the image, or when its segmentation does not rasterize.
    A box crossing the border is clipped to the image. Runs in worker processes: no TF ops here.
    """
    name = f"{image['file_name']} (id {image['id']})"
    path = os.path.join(image_dir, image["file_name"])
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return None, 0, [("image", name, f"cannot read {path}: {e.strerror or e}")], []
    try:
        with Image.open(io.BytesIO(data)) as pil:
            pil.load()
            size = (pil.height, pil.width)
            fmt = _image_format(data)
            if fmt is None:  # GIF, BMP, WebP, TIFF...: stored as PNG, which every reader decodes
                data, fmt = _png(np.asarray(pil.convert("RGB"))), "png"
    except Exception as e:  # PIL raises many types for broken files
        return None, 0, [("image", name, f"unreadable image: {e}")], []
    height, width = image["height"], image["width"]
    if size != (height, width):
        return None, 0, [("image", name, f"the file is {size[0]}x{size[1]}, the JSON says {height}x{width}")], []

    skipped, clipped, objects = [], [], []
    for ann in annotations:
        ann_name = f"{ann['id']} (image {image['file_name']})"
        x, y, w, h = ann["bbox"]
        problem = ("a NaN or infinite coordinate in box" if not all(map(math.isfinite, ann["bbox"]))
                   else "negative width or height in box" if w < 0 or h < 0
                   else "zero-area box" if w == 0 or h == 0 else None)
        if problem:
            skipped.append(("annotation", ann_name, f"{problem} {ann['bbox']}"))
            continue
        x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)
        if x2 <= x1 or y2 <= y1:
            skipped.append(("annotation", ann_name, f"box {ann['bbox']} lies outside the {width}x{height} image"))
            continue
        if (x1, y1, x2, y2) != (x, y, x + w, y + h):
            clipped.append(ann_name)
        mask = None
        if include_masks:
            try:
                mask = _png(coco.annotation_mask(ann.get("segmentation", []), height, width))
            except (ValueError, TypeError) as e:
                skipped.append(("annotation", ann_name, f"bad segmentation: {e}"))
                continue
        objects.append((ann, (x1, y1, x2, y2), mask))

    feature = {
        HEIGHT: _feature([height], int), WIDTH: _feature([width], int),
        FILENAME: _feature([image["file_name"].encode("utf8")], bytes),
        SOURCE_ID: _feature([str(image["id"]).encode("utf8")], bytes),
        KEY_SHA256: _feature([hashlib.sha256(data).hexdigest().encode("utf8")], bytes),
        ENCODED: _feature([data], bytes), FORMAT: _feature([fmt.encode("utf8")], bytes),
        XMIN: _feature([b[0] / width for _, b, _ in objects], float),
        XMAX: _feature([b[2] / width for _, b, _ in objects], float),
        YMIN: _feature([b[1] / height for _, b, _ in objects], float),
        YMAX: _feature([b[3] / height for _, b, _ in objects], float),
        CLASS_TEXT: _feature([a.get("_category_name", "").encode("utf8") for a, _, _ in objects], bytes),
        CLASS_LABEL: _feature([a["category_id"] for a, _, _ in objects], int),
        IS_CROWD: _feature([int(a.get("iscrowd", 0)) for a, _, _ in objects], int),
        AREA: _feature([float(a.get("area", (b[2] - b[0]) * (b[3] - b[1]))) for a, b, _ in objects], float),
    }
    if include_masks:
        feature[MASK] = _feature([m for _, _, m in objects], bytes)
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    # deterministic: a fixed feature order, so the same dataset gives the same bytes in every process
    return example.SerializeToString(deterministic=True), len(objects), skipped, clipped


def _convert_job(job):
    return convert_image(*job)


def coco_examples(data, image_dir, include_masks, num_processes=1):
    """Yields convert_image's result for every image of a loaded COCO dict, in file order."""
    names = dict(zip(*coco.categories(data)))
    by_image = coco.annotations_by_image(data)
    jobs = ((image, [dict(a, _category_name=names[a["category_id"]]) for a in by_image[image["id"]]],
             image_dir, include_masks) for image in data["images"])
    if num_processes <= 1:
        yield from map(_convert_job, jobs)
        return
    # fork: the workers only run PIL, pycocotools and protobuf, never TF ops, so TF's threads are not needed there.
    context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    with context.Pool(num_processes) as pool:
        yield from pool.imap(_convert_job, jobs, chunksize=4)


def create_coco_tfrecord(image_dir, object_annotations_file, output_file_prefix, num_shards=1,
                         include_masks=False, num_processes=1, progress=True):
    """Writes a COCO dataset as Model Garden TFRecord shards; returns a ConversionReport.

    Image i goes to shard i % num_shards (as Model Garden's converter). Every image becomes one Example, also
    those without annotations. Raises CocoFormatError for an annotation file that is not COCO.
    """
    data = coco.load_coco(object_annotations_file)
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"image_dir {image_dir}: no such folder")
    if num_shards < 1:
        raise ValueError(f"num_shards must be at least 1, got {num_shards}")
    directory = os.path.dirname(output_file_prefix)
    if directory:
        os.makedirs(directory, exist_ok=True)
    report = ConversionReport(files=shard_paths(output_file_prefix, num_shards))
    bar = _Progress(len(data["images"]), "images") if progress else None
    writers = [tf.io.TFRecordWriter(path) for path in report.files]
    try:
        for i, (record, kept, skipped, clipped) in enumerate(
                coco_examples(data, image_dir, include_masks, num_processes)):
            if record is not None:
                writers[report.num_images % num_shards].write(record)
                report.num_images += 1
                report.num_annotations += kept
            report.skipped += skipped
            report.clipped += clipped
            if bar:
                bar.update(i + 1)
    finally:
        for writer in writers:
            writer.close()
    return report


class _Progress:
    """A one-line progress bar on stderr (a line per 10% when stderr is not a terminal)."""

    def __init__(self, total, unit):
        self.total, self.unit, self.last = max(total, 1), unit, -1
        self.tty = sys.stderr.isatty()

    def update(self, done):
        tenth = done * 10 // self.total
        if not self.tty and tenth == self.last and done != self.total:
            return
        self.last = tenth
        filled = done * 30 // self.total
        end = "\n" if done >= self.total or not self.tty else ""
        sys.stderr.write(f"\r[{'=' * filled}{' ' * (30 - filled)}] {done}/{self.total} {self.unit}{end}")
        sys.stderr.flush()


def parse_example(serialized):
    """A serialized Example → dict of dense tensors (Model Garden's decoder defaults for absent keys).

    Returns: encoded (string), source_id, filename (strings), height / width (int64, -1 when absent),
    boxes float32 [N, 4] [ymin, xmin, ymax, xmax] normalized, labels int64 [N] (raw category ids), is_crowd
    int64 [N] (zeros when absent), area float32 [N], masks string [N] PNGs (empty when absent), class_text [N].
    """
    f = tf.io.parse_single_example(serialized, FEATURE_SPEC)
    dense = {k: tf.sparse.to_dense(v) for k, v in f.items() if isinstance(v, tf.SparseTensor)}
    boxes = tf.stack([dense[YMIN], dense[XMIN], dense[YMAX], dense[XMAX]], axis=-1)
    n = tf.shape(boxes)[0]
    crowd = dense[IS_CROWD]
    crowd = tf.cond(tf.size(crowd) == n, lambda: crowd, lambda: tf.zeros([n], tf.int64))
    return {"encoded": f[ENCODED], "source_id": f[SOURCE_ID], "filename": f[FILENAME],
            "height": f[HEIGHT], "width": f[WIDTH], "boxes": boxes, "labels": dense[CLASS_LABEL],
            "is_crowd": crowd, "area": dense[AREA], "masks": dense[MASK], "class_text": dense[CLASS_TEXT]}


def tfrecord_files(file_pattern):
    """The sorted shard paths a glob (or comma-separated globs) names; FileNotFoundError when there are none."""
    files = sorted(p for pattern in str(file_pattern).split(",") for p in glob.glob(pattern.strip()))
    if not files:
        raise FileNotFoundError(f"no TFRecord files match {file_pattern!r}")
    return files


def coco_from_tfrecords(file_pattern, include_masks=True):
    """The ground truth of TFRecord shards as a COCO dict (original-image pixels), for evaluation without a JSON.

    Image ids are int(source_id) (the Model Garden convention). Masks (when stored and include_masks) become
    compressed RLEs; crowd objects keep iscrowd 1. Annotation ids are assigned 1, 2, ... in reading order.
    """
    images, annotations, names = [], [], {}
    for record in tf.data.TFRecordDataset(tfrecord_files(file_pattern)):
        ex = {k: v.numpy() for k, v in parse_example(record).items()}
        source_id = ex["source_id"].decode("utf8")
        try:
            image_id = int(source_id)
        except ValueError:
            raise ValueError(f"{file_pattern}: source_id {source_id!r} of {ex['filename']!r} is not an integer "
                             "COCO image id; evaluate with the dataset's JSON instead") from None
        height, width = int(ex["height"]), int(ex["width"])
        if height <= 0 or width <= 0:
            height, width = tf.io.decode_image(ex["encoded"], expand_animations=False).shape[:2]
        images.append({"id": image_id, "file_name": ex["filename"].decode("utf8"), "height": height, "width": width})
        masks = ex["masks"] if include_masks and len(ex["masks"]) == len(ex["labels"]) else [None] * len(ex["labels"])
        for i, (box, label, crowd, mask) in enumerate(zip(ex["boxes"], ex["labels"], ex["is_crowd"], masks)):
            y1, x1, y2, x2 = (box * [height, width, height, width]).tolist()
            ann = {"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label),
                   "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": int(crowd),
                   "area": float(ex["area"][i]) if len(ex["area"]) > i else (x2 - x1) * (y2 - y1)}
            if mask is not None:
                ann["segmentation"] = coco.encode_mask(np.asarray(Image.open(io.BytesIO(mask))) > 0)
            annotations.append(ann)
            if i < len(ex["class_text"]):
                names.setdefault(int(label), ex["class_text"][i].decode("utf8"))
            names.setdefault(int(label), str(int(label)))
    categories = [{"id": cid, "name": names[cid]} for cid in sorted(names)]
    return {"images": images, "annotations": annotations, "categories": categories}
