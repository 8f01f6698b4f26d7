"""Synthetic shapes: a deterministic COCO-format instance segmentation dataset.

Each image has a plain background of a random colour and one to `_MAX_SHAPES` flat-coloured shapes (circle,
axis-aligned square, upright triangle) in random colours, sizes and positions: the classic "shapes" toy set of
Mask R-CNN tutorials. Later shapes occlude earlier ones. Mild Gaussian noise goes over the whole image, which
is saved as a JPEG.

Every instance mask is the *visible* part of its shape: the pixels that shape painted and no later shape
painted over. Masks and pixels agree exactly because each shape is rasterized once, with PIL, into a mask,
and that mask is what paints the image. Placements that would leave an earlier shape less than
`_MIN_VISIBLE` of its area, or any shape tinier than `_MIN_AREA` of the image, are re-sampled, so every
ground truth object is a clean, learnable one. The set is deliberately simple (three classes, medium and large
shapes, mild occlusion, no texture or rotation): it exists so that the main job can train a Mask R-CNN from
scratch in minutes on a CPU, exercising every part of the pipeline; it is no benchmark of detection quality.
(Version 2 had six classes, rotations, shading and textured backgrounds: torchvision's Mask R-CNN, trained as
the main job is, reached bbox AP 0.19 on it against 0.51 on this set; BENCHMARKS.md.)

Image `i` of a split depends only on `(seed, split, i, image_size)`: its random generator is seeded from
those, so a dataset with more images starts with the same images, and the same arguments give byte-identical
files.

Layout written by `generate_shapes_dataset(output_dir, ...)`:

    output_dir/train/000001.jpg ...            output_dir/val/000001.jpg ...
    output_dir/annotations/instances_{train,val}.json
    output_dir/tfrecord/{train,val}-%05d-of-%05d.tfrecord     (with tfrecords=True)
    output_dir/shapes.json                                     (generation arguments; written last)
"""
import dataclasses
import glob
import inspect
import json
import logging
import math
import multiprocessing
import os
import re
import sys
import time

import numpy as np
from PIL import Image, ImageDraw

from tfrcnn.data.coco import encode_mask

CATEGORIES = [
    {"id": 1, "name": "circle"},
    {"id": 2, "name": "square"},
    {"id": 3, "name": "triangle"},
]
SPLITS = ("train", "val")

# Bump when rendering changes: ensure_shapes_dataset then regenerates datasets written by older code.
_VERSION = 3
_MAX_SHAPES = 4
_DIAMETER = (0.18, 0.45)     # shape's circumscribed diameter, fraction of min(height, width): 46..115 px at 256
_MIN_VISIBLE = 0.75          # an occluded shape keeps at least this fraction of its own area
_MIN_AREA = 0.0012           # and at least this fraction of the image (79 px at 256 x 256)
_MIN_CONTRAST = 100.0        # RGB distance between a shape's colour and what it is drawn over
_PLACEMENT_TRIES = 20
_COLOUR_TRIES = 30
_NOISE_STD = 4.0
_JPEG_QUALITY = 92

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ShapesDataset:
    """Paths of a generated shapes dataset. TFRecord patterns are globs (None when none were written)."""
    root: str
    train_image_dir: str
    val_image_dir: str
    train_annotations: str
    val_annotations: str
    train_tfrecords: str | None
    val_tfrecords: str | None

    def image_dir(self, split):
        return {"train": self.train_image_dir, "val": self.val_image_dir}[split]

    def annotations(self, split):
        return {"train": self.train_annotations, "val": self.val_annotations}[split]

    def tfrecords(self, split):
        return {"train": self.train_tfrecords, "val": self.val_tfrecords}[split]


# ------------------------------------------------------------------------------------------------ rendering

def image_rng(seed, split, index):
    """The generator of image `index` of `split`: independent of how many images the split has."""
    return np.random.default_rng([int(seed), SPLITS.index(split), int(index)])


def render_shapes_image(seed, split, index, image_size=(256, 256)):
    """Renders one image, before JPEG encoding.

    Returns:
      image: uint8 [H, W, 3] RGB.
      objects: list, in drawing order, of dicts with "category_id" (int, 1-based) and "mask" (bool [H, W],
        the visible part of the shape; masks of one image never overlap).
    """
    height, width = _hw(image_size)
    rng = image_rng(seed, split, index)
    image = _background(rng, height, width)
    shapes = _place_shapes(rng, image, height, width)
    for shape in shapes:
        image[shape["full"]] = shape["colour"]
    image += _NOISE_STD * rng.standard_normal(image.shape, dtype=np.float32)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return image, [{"category_id": s["category_id"], "mask": s["visible"]} for s in shapes]


def _hw(image_size):
    if isinstance(image_size, int):
        return image_size, image_size
    height, width = image_size
    return int(height), int(width)


def _background(rng, height, width):
    """float32 [H, W, 3]: one random colour."""
    return np.broadcast_to(rng.uniform(0, 255, 3).astype(np.float32), (height, width, 3)).copy()


def _polygon(category_id, cx, cy, radius):
    """Vertices (x, y) of the shape with circumscribed radius `radius`; None for the circle. The square is
    axis-aligned and the triangle equilateral with its apex up (image y grows downwards)."""
    name = CATEGORIES[category_id - 1]["name"]
    if name == "circle":
        return None
    count, first = {"square": (4, math.pi / 4), "triangle": (3, -math.pi / 2)}[name]
    return [(cx + radius * math.cos(first + 2 * math.pi * k / count),
             cy + radius * math.sin(first + 2 * math.pi * k / count)) for k in range(count)]


def _rasterize(category_id, cx, cy, radius, height, width):
    mask = Image.new("1", (width, height))
    draw = ImageDraw.Draw(mask)
    vertices = _polygon(category_id, cx, cy, radius)
    if vertices is None:
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=1)
    else:
        draw.polygon(vertices, fill=1)
    return np.asarray(mask, bool)


def _place_shapes(rng, background, height, width):
    """Samples shapes one by one, re-sampling a placement that would occlude an earlier shape too much.

    Returns dicts with category_id, full (bool [H, W], the drawn shape), visible (its unoccluded part),
    colour (float32 [3]) and the geometry (cx, cy, radius).
    """
    min_area = _MIN_AREA * height * width
    shapes = []
    for _ in range(rng.integers(1, _MAX_SHAPES + 1)):
        for _ in range(_PLACEMENT_TRIES):
            category_id = int(rng.integers(1, len(CATEGORIES) + 1))
            radius = 0.5 * min(height, width) * rng.uniform(*_DIAMETER)
            # The circumscribed circle lies inside the image: no shape is cut by the border.
            cx = rng.uniform(radius, width - radius)
            cy = rng.uniform(radius, height - radius)
            full = _rasterize(category_id, cx, cy, radius, height, width)
            area = int(full.sum())
            if area < min_area:
                continue
            kept = [int((s["visible"] & ~full).sum()) for s in shapes]
            if all(k >= max(_MIN_VISIBLE * s["area"], min_area) for k, s in zip(kept, shapes)):
                break
        else:
            continue
        under = [s["colour"] for s in shapes if (s["visible"] & full).any()]
        colour = _pick_colour(rng, background[full].mean(axis=0), under)
        for s in shapes:
            s["visible"] = s["visible"] & ~full
        shapes.append(dict(category_id=category_id, full=full, visible=full.copy(), area=area, colour=colour,
                           cx=cx, cy=cy, radius=radius))
    return shapes


def _pick_colour(rng, background_mean, under):
    """A colour at least _MIN_CONTRAST from the background under the shape and from the shapes it covers
    (else the most distant of the candidates), so that every visible boundary is visible in the pixels."""
    others = np.stack([background_mean] + under)
    best, best_distance = None, -1.0
    for _ in range(_COLOUR_TRIES):
        colour = rng.uniform(0, 255, 3).astype(np.float32)
        distance = float(np.linalg.norm(others - colour, axis=1).min())
        if distance >= _MIN_CONTRAST:
            return colour
        if distance > best_distance:
            best, best_distance = colour, distance
    return best


# ---------------------------------------------------------------------------------------------- COCO files

def _coco_annotation(mask, category_id, image_id, annotation_id):
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    x, y = int(cols[0]), int(rows[0])
    return {
        "id": annotation_id, "image_id": image_id, "category_id": category_id,
        "bbox": [float(x), float(y), float(cols[-1] + 1 - x), float(rows[-1] + 1 - y)],
        "area": float(mask.sum()), "iscrowd": 0, "segmentation": encode_mask(mask),
    }


def _file_name(image_id):
    return f"{image_id:06d}.jpg"


def _render_and_save(args):
    """Renders image `index`, writes its JPEG; returns (image record, annotations without ids)."""
    seed, split, index, image_size, image_dir = args
    image, objects = render_shapes_image(seed, split, index, image_size)
    image_id = index + 1
    record = {"id": image_id, "file_name": _file_name(image_id), "height": image.shape[0],
              "width": image.shape[1]}
    # 4:4:4 chroma: colour edges stay where the masks say they are.
    Image.fromarray(image).save(os.path.join(image_dir, record["file_name"]), "JPEG",
                                quality=_JPEG_QUALITY, subsampling=0)
    return record, [_coco_annotation(o["mask"], o["category_id"], image_id, 0) for o in objects]


def _write_split(root, split, num_images, image_size, seed, num_processes):
    image_dir = os.path.join(root, split)
    os.makedirs(image_dir, exist_ok=True)
    _remove_stale(image_dir, r"\d{6}\.jpg", {_file_name(i + 1) for i in range(num_images)})
    jobs = [(seed, split, i, image_size, image_dir) for i in range(num_images)]
    if num_processes > 1:
        # fork, as the TFRecord converter: workers run numpy and PIL only, and skip re-importing the package.
        context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        with context.Pool(num_processes) as pool:
            results = pool.map(_render_and_save, jobs, chunksize=32)  # in order: still deterministic
    else:
        results = [_render_and_save(job) for job in jobs]

    images, annotations = [], []
    for record, anns in results:
        images.append(record)
        for ann in anns:
            ann["id"] = len(annotations) + 1
            annotations.append(ann)
    coco = {
        "info": {"description": f"tfrcnn synthetic shapes, {split} split", "version": str(_VERSION)},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [dict(c, supercategory="shape") for c in CATEGORIES],
    }
    ann_file = os.path.join(root, "annotations", f"instances_{split}.json")
    os.makedirs(os.path.dirname(ann_file), exist_ok=True)
    _atomic_write(ann_file, json.dumps(coco))
    return image_dir, ann_file


def _remove_stale(directory, pattern, keep):
    """Removes files this module wrote earlier (names matching `pattern`) that the new dataset lacks."""
    for name in os.listdir(directory):
        if re.fullmatch(pattern, name) and name not in keep:
            os.remove(os.path.join(directory, name))


def _atomic_write(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------ public API

def _arguments(num_train, num_val, image_size, seed, tfrecords, num_shards, include_masks):
    height, width = _hw(image_size)
    return {"version": _VERSION, "num_train": int(num_train), "num_val": int(num_val),
            "image_size": [height, width], "seed": int(seed), "tfrecords": bool(tfrecords),
            "num_shards": int(num_shards), "include_masks": bool(include_masks)}


def _dataset(root, args):
    root = os.path.abspath(root)

    def pattern(split):
        if not args["tfrecords"]:
            return None
        return os.path.join(root, "tfrecord", f"{split}-*-of-{args['num_shards']:05d}.tfrecord")

    return ShapesDataset(
        root=root,
        train_image_dir=os.path.join(root, "train"), val_image_dir=os.path.join(root, "val"),
        train_annotations=os.path.join(root, "annotations", "instances_train.json"),
        val_annotations=os.path.join(root, "annotations", "instances_val.json"),
        train_tfrecords=pattern("train"), val_tfrecords=pattern("val"))


def generate_shapes_dataset(output_dir, num_train=2000, num_val=200, image_size=(256, 256), seed=0,
                            tfrecords=True, num_shards=4, include_masks=True, num_processes=1,
                            progress=False):
    """Writes the shapes dataset under `output_dir` (overwriting one that is there) and returns its paths.

    Args:
      output_dir: root folder; created if needed.
      num_train, num_val: images per split.
      image_size: (height, width) of every image, or one int for square images.
      seed: base seed; image i of a split is a function of (seed, split, i, image_size) only.
      tfrecords: also convert each split to TFRecords (Model Garden keys) with
        `tfrcnn.data.tfrecord.create_coco_tfrecord`.
      num_shards: shards per split.
      include_masks: write instance masks into the TFRecords (the JSON always has them).
      num_processes: worker processes for rendering and conversion; the output does not depend on it.
      progress: log per-split timings and let the converter show its progress bar.
    """
    args = _arguments(num_train, num_val, image_size, seed, tfrecords, num_shards, include_masks)
    dataset = _dataset(output_dir, args)
    os.makedirs(dataset.root, exist_ok=True)
    marker = os.path.join(dataset.root, "shapes.json")
    if os.path.exists(marker):
        os.remove(marker)  # from here until it is rewritten, the dataset counts as incomplete

    for split in SPLITS:
        start = time.time()
        image_dir, ann_file = _write_split(dataset.root, split, args[f"num_{split}"], args["image_size"],
                                           args["seed"], num_processes)
        if progress:
            _log.info("shapes: %d %s images in %.1f s", args[f"num_{split}"], split, time.time() - start)
        if tfrecords:
            _write_tfrecords(dataset, split, image_dir, ann_file, args, num_processes, progress)
    _atomic_write(marker, json.dumps(args, indent=2, sort_keys=True))
    return dataset


# The arguments that define a dataset, with generate_shapes_dataset's defaults (the other functions take them as
# **kwargs so that the defaults live in one place).
_DEFAULTS = {k: p.default for k, p in inspect.signature(generate_shapes_dataset).parameters.items()
             if k not in ("output_dir", "num_processes", "progress")}


def _write_tfrecords(dataset, split, image_dir, ann_file, args, num_processes, progress):
    from tfrcnn.data.tfrecord import create_coco_tfrecord

    tf_dir = os.path.join(dataset.root, "tfrecord")
    os.makedirs(tf_dir, exist_ok=True)
    for path in glob.glob(os.path.join(tf_dir, f"{split}-*-of-*.tfrecord")):
        os.remove(path)  # shards of an earlier shard count would match no pattern but clutter the folder
    start = time.time()
    report = create_coco_tfrecord(image_dir, ann_file, os.path.join(tf_dir, split), num_shards=args["num_shards"],
                                  include_masks=args["include_masks"], num_processes=num_processes,
                                  progress=progress)
    if report.skipped:
        raise RuntimeError(f"shapes {split}: the converter skipped {report.skipped[:5]}")
    if progress:
        _log.info("shapes: %s TFRecords in %.1f s", split, time.time() - start)


def shapes_dataset_is_complete(output_dir, **kwargs):
    """True when `output_dir` holds a complete shapes dataset generated with these arguments (defaults as in
    `generate_shapes_dataset`)."""
    args = _arguments(**{**_DEFAULTS, **kwargs})
    dataset = _dataset(output_dir, args)
    try:
        with open(os.path.join(dataset.root, "shapes.json")) as f:
            if json.load(f) != args:
                return False
    except (OSError, ValueError):
        return False
    for split in SPLITS:
        if not os.path.isfile(dataset.annotations(split)):
            return False
        image_dir = dataset.image_dir(split)
        if not all(os.path.isfile(os.path.join(image_dir, _file_name(i + 1))) for i in range(args[f"num_{split}"])):
            return False
        if args["tfrecords"]:
            shards = [dataset.tfrecords(split).replace("*", f"{k:05d}") for k in range(args["num_shards"])]
            if not all(os.path.isfile(p) for p in shards):
                return False
    return True


def ensure_shapes_dataset(output_dir, **kwargs):
    """Returns the shapes dataset under `output_dir`, generating it only when it is absent, incomplete (e.g. an
    interrupted generation) or was generated with other arguments. Takes `generate_shapes_dataset`'s keyword
    arguments; `num_processes` and `progress` do not count as differences."""
    run_kwargs = {k: kwargs.pop(k) for k in ("num_processes", "progress") if k in kwargs}
    if shapes_dataset_is_complete(output_dir, **kwargs):
        return _dataset(output_dir, _arguments(**{**_DEFAULTS, **kwargs}))
    return generate_shapes_dataset(output_dir, **kwargs, **run_kwargs)
