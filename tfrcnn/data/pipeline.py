"""The tf.data input pipeline: TFRecords (or a COCO JSON + images) → the batches the detectors train on.

Per image: parse ▸ decode (JPEG or PNG; grayscale and RGBA → RGB) ▸ gt boxes to original pixels, clipped;
zero-area boxes dropped; crowd boxes set aside as ignore regions; categories mapped to classes 1..N ▸ each gt
mask cropped to its box at `mask_crop_size`² (full-image masks never travel further) ▸ keep-ratio resize
(optionally multi-scale) ▸ random horizontal flip ▸ normalize ▸ pad to the static `data.padded_size()` ▸ gt padded
to `max_instances`. Batches are `tfrcnn.structures`' (images, targets); evaluation batches add the source id,
the original size and the scale factors.

Randomness (shuffle, scale, flip) derives from `runtime.seed` and changes every epoch, reproducibly.
"""
import ast
import contextlib
import logging
import re
import sys

import tensorflow as tf

from tfrcnn import structures
from tfrcnn.data import coco, tfrecord
from tfrcnn.inference import Transform
from tfrcnn.ops.image import pad_to, rescaled_size, resize_and_normalize

AUTOTUNE = tf.data.AUTOTUNE
log = logging.getLogger("tfrcnn.data")
# The pipeline's checks fail in a tf.data op, as an InvalidArgumentError "assertion failed: [<_CHECK>...]" that
# `input_errors` turns back into a ValueError with the message after _CHECK.
_CHECK = "tfrcnn.data check: "
_CHECK_FAILED = re.compile(r"assertion failed: \[" + re.escape(_CHECK) + r"(.*?)\](?:\n|$)", re.MULTILINE)
_DATA_LOSS = re.compile(r"((?:truncated|corrupted) record at [^\[\n]*?)\s*(?:\[Op:|\n|$)")
_NO_MASKS_HINT = ("convert the dataset again with scripts/create_coco_tfrecord.py --include_masks, or train a "
                  "Faster R-CNN config")


@contextlib.contextmanager
def input_errors(file_pattern=None):
    """Re-raises a failed check of the input pipeline (a corrupt image with data.corrupt_images 'error', a
    record without the masks a mask head needs), which stops a dataset's iteration with TensorFlow's
    InvalidArgumentError deep in a graph's context, as a ValueError of one line naming the image and its file;
    with `file_pattern` (the split's TFRecords), also a DataLossError (a shard cut short or not a TFRecord
    file, which TensorFlow does not name), as a ValueError naming the shard. Wrap whatever iterates a
    `build_dataset` dataset (Keras' fit, an evaluation loop)."""
    try:
        yield
    except tf.errors.InvalidArgumentError as e:
        found = _CHECK_FAILED.search(e.message or "")
        if found is None:
            raise
        raise ValueError(_unescape(found.group(1))) from e
    except tf.errors.DataLossError as e:
        if not file_pattern:
            raise
        raise ValueError(_damaged_shard(file_pattern, e)) from e


def _damaged_shard(file_pattern, error):
    """The message for a DataLossError met reading `file_pattern`'s shards: each shard is read again (only after
    such an error) to name the one at fault."""
    found = _DATA_LOSS.search(error.message or "")
    reason = found.group(1).replace("' failed with ", ": ") if found else "damaged"
    for path in tfrecord.tfrecord_files(file_pattern):
        try:
            tf.data.TFRecordDataset(path).reduce(tf.constant(0, tf.int64), lambda count, _: count + 1)
        except tf.errors.DataLossError as e:
            found = _DATA_LOSS.search(e.message or "")
            reason = found.group(1).replace("' failed with ", ": ") if found else reason
            return f"{path}: a damaged TFRecord shard, {reason} (cut short, or not a TFRecord file: convert it again)"
    return f"{file_pattern}: a damaged TFRecord shard, {reason}"


def _unescape(text):
    """A string that tf.debugging.Assert printed C-escaped (quotes, backslashes, non-ASCII bytes in octal)."""
    try:
        return ast.literal_eval(f"b'{text}'").decode("utf8", "replace")
    except (SyntaxError, ValueError):
        return text


def check_splits(config, splits):
    """The checks `build_dataset` makes before it reads a split (`check_masks` for a model with a mask head), on
    several splits at once: a job calls it before it writes anything."""
    if config.model.with_mask:
        for split in splits:
            pattern = getattr(config.data, split).tfrecord
            if pattern:
                check_masks(pattern)


def check_masks(file_pattern, max_records=32):
    """Raises ValueError when the first TFRecord shard of `file_pattern` holds objects without masks (a dataset
    converted without --include_masks), read before a mask head trains or evaluates on it: its first records
    with objects are enough (a mix is still caught, later, by the pipeline's own check)."""
    files = tfrecord.tfrecord_files(file_pattern)
    try:
        for raw in tf.data.TFRecordDataset(files[:1]).take(max_records):
            feature = tf.train.Example.FromString(raw.numpy()).features.feature
            objects = len(feature[tfrecord.CLASS_LABEL].int64_list.value) if tfrecord.CLASS_LABEL in feature else 0
            if not objects:
                continue
            masks = len(feature[tfrecord.MASK].bytes_list.value) if tfrecord.MASK in feature else 0
            if masks != objects:
                source_id = feature[tfrecord.SOURCE_ID].bytes_list.value[:1] if tfrecord.SOURCE_ID in feature else []
                which = f"source_id {source_id[0].decode('utf8', 'replace')}" if source_id else "a record"
                detail = "no masks" if not masks else f"{masks} masks for {objects} objects"
                raise ValueError(f"{files[0]}: the model has a mask head but this shard has {detail} ({which}: "
                                 f"was it written without --include_masks?): {_NO_MASKS_HINT}")
            return
    except tf.errors.OpError as e:  # a shard that is not a TFRecord file, or is cut short
        raise ValueError(f"{files[0]}: not a readable TFRecord shard ({e.message.splitlines()[0]})") from e


class CorruptImages(list):
    """Images skipped because they did not decode: 'source_id <id> (<filename>) in <file>' per entry."""


def build_dataset(config, split, training, batch_size=None, input_context=None, corrupt_images=None,
                  keep_source_id=False):
    """The batched dataset of one split of `config.data`.

    Args:
      config: a tfrcnn.config.Config.
      split: 'train', 'val' or 'test' (the section of config.data to read).
      training: shuffle, random scale and flip, drop images without gt (`filter_empty_gt`), drop the last
        partial batch. Otherwise the order is the file order and every image is kept.
      batch_size: images per batch; default data.samples_per_gpu (give the global batch when Keras' fit
        distributes the dataset itself).
      input_context: a tf.distribute.InputContext: this worker reads only its share of the files (or records).
      corrupt_images: a CorruptImages list that receives each image skipped as corrupt (data.corrupt_images
        'skip'); with 'error' a corrupt image stops the pipeline with an InvalidArgumentError naming it, which
        `input_errors` turns into a ValueError of that one line.
      keep_source_id: training targets carry `source_id` too (evaluation targets always do), e.g. to name the
        images that scripts/browse_dataset.py draws.
    Raises ValueError (`check_masks`) when the model has a mask head and the split's first TFRecord shard has
    no masks.
    Returns:
      a tf.data.Dataset of (images float32 [B, H, W, 3], targets) — see tfrcnn/structures.py; without
      training, targets also hold source_id string [B], original_size int32 [B, 2], scale float32 [B, 2].
    """
    data_cfg = config.data
    ds = read_examples(config, split, training, input_context, corrupt_images)
    seed = config.runtime.seed
    if training:
        ds = tf.data.Dataset.zip((ds, tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)))
    else:
        ds = ds.map(lambda ex: (ex, tf.constant(0, tf.int64)))
    transform = _Transform(data_cfg, config.model.with_mask, training, keep_source_id)
    ds = ds.map(transform, num_parallel_calls=AUTOTUNE)
    batch_size = batch_size or data_cfg.samples_per_gpu
    if training or transform.test.static:
        ds = ds.batch(batch_size, drop_remainder=training, num_parallel_calls=AUTOTUNE)
    else:  # images of several sizes: each batch padded to its largest (all multiples of size_divisor)
        ds = ds.padded_batch(batch_size)
    options = tf.data.Options()
    options.deterministic = data_cfg.deterministic
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(options).prefetch(AUTOTUNE)


def read_examples(config, split, training=False, input_context=None, corrupt_images=None):
    """The split's images one by one as stored, before any transform: `tfrecord.parse_example`'s dict plus `file`
    (the shard or ann_file it came from), `classes` int32 [N] (1..N, -1 for a category outside
    data.category_ids) and `image` uint8 [h, w, 3]. With `training`: shuffled, and without the images that
    `filter_empty_gt` drops. Corrupt images as in `build_dataset`."""
    data_cfg = config.data
    split_cfg = getattr(data_cfg, split)
    with_mask = config.model.with_mask
    category_ids, _ = coco.resolve_categories(data_cfg)
    if with_mask and split_cfg.tfrecord:
        check_masks(split_cfg.tfrecord)  # now, rather than as a tf.data error once training has begun
    seed, buffer = config.runtime.seed, data_cfg.shuffle_buffer
    ds = _records(split_cfg, with_mask, training, seed, buffer, input_context).map(
        lambda source, record: dict(tfrecord.parse_example(record), file=source), num_parallel_calls=AUTOTUNE)
    table = _class_table(category_ids)
    ds = ds.map(lambda ex: dict(ex, classes=table.lookup(ex["labels"])), num_parallel_calls=AUTOTUNE)
    if training and split_cfg.filter_empty_gt:
        ds = ds.filter(_has_gt)
    return _decode_images(ds, data_cfg.corrupt_images, corrupt_images, data_cfg.deterministic)


def read_images(config, split, image_ids):
    """{image id: uint8 [h, w, 3]} of the split's images whose source_id is one of `image_ids`, in one pass over
    the split where only those decode (e.g. the images `tfrcnn.evaluation.analysis.analyze` draws)."""
    split_cfg = getattr(config.data, split)
    wanted = tf.constant([str(int(i)) for i in image_ids], tf.string)
    ds = _records(split_cfg, False, False, 0, 1, None).map(lambda _, record: tfrecord.parse_example(record))
    ds = ds.filter(lambda ex: tf.reduce_any(tf.equal(ex["source_id"], wanted))).map(
        lambda ex: (ex["source_id"], tf.io.decode_image(ex["encoded"], channels=3, expand_animations=False)))
    with input_errors(split_cfg.tfrecord):
        return {int(source_id): image.numpy() for source_id, image in ds}


def _class_table(category_ids):
    """Category id → class 1..N; -1 for ids outside category_ids (dropped, as MMDetection's `classes`)."""
    return tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
        tf.constant(category_ids, tf.int64), tf.range(1, len(category_ids) + 1, dtype=tf.int32)), -1)


def count_images(config, split, training=True):
    """How many images one pass of the split yields: all of them, or with `training` those that
    `filter_empty_gt` keeps (corrupt images are not detected here). Reads every record once: a damaged
    TFRecord shard raises ValueError naming it (`input_errors`)."""
    split_cfg = getattr(config.data, split)
    category_ids, _ = coco.resolve_categories(config.data)
    records = _records(split_cfg, False, False, 0, 1, None)
    ds = records.map(lambda source, record: tfrecord.parse_example(record), num_parallel_calls=AUTOTUNE)
    if training and split_cfg.filter_empty_gt:
        table = _class_table(category_ids)
        ds = ds.map(lambda ex: dict(ex, classes=table.lookup(ex["labels"]))).filter(_has_gt)
    with input_errors(split_cfg.tfrecord):
        return int(ds.reduce(tf.constant(0, tf.int64), lambda count, _: count + 1))


def count_training_images(config, batch_size):
    """`count_images(config, "train")`, for a training run: raises ValueError saying why in one line when the split
    yields less than one batch of `batch_size` images (no images, no annotations, no category of
    data.category_ids among them, or too few images with one), naming the split's source and the ids it holds."""
    count = count_images(config, "train")
    if count >= batch_size:
        return count
    split_cfg = config.data.train
    labels = _records(split_cfg, False, False, 0, 1, None).map(lambda _, record: tfrecord.parse_example(record)["labels"])
    images, found = 0, set()
    with input_errors(split_cfg.tfrecord):
        for image_labels in labels.as_numpy_iterator():  # only on this error path: a pass over the labels
            images, found = images + 1, found | set(image_labels.tolist())
    wanted = coco.resolve_categories(config.data)[0]
    if not images:
        why = "it holds no image"
    elif not found:
        why = f"none of its {images} images has an annotation"
    elif not found & set(wanted):
        why = f"no annotation has a category of data.category_ids {wanted}; its category ids are {sorted(found)}"
    else:
        why = (f"{count} of its {images} images have an object of data.category_ids (category ids found: "
               f"{sorted(found)}), fewer than one batch of {batch_size} (data.samples_per_gpu x replicas)")
    raise ValueError(f"data.train ({split_cfg.tfrecord or split_cfg.ann_file}): no training batch: {why}")


def _records(split_cfg, with_mask, training, seed, shuffle_buffer, input_context):
    """(source file name, serialized Example) pairs: from TFRecord shards, or converted from ann_file."""
    pipelines = input_context.num_input_pipelines if input_context else 1
    index = input_context.input_pipeline_id if input_context else 0
    if split_cfg.tfrecord:
        files = tfrecord.tfrecord_files(split_cfg.tfrecord)
        ds = tf.data.Dataset.from_tensor_slices(files)
        by_file = len(files) >= pipelines
        if by_file and pipelines > 1:
            ds = ds.shard(pipelines, index)
        if training:
            ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
        ds = ds.interleave(lambda f: tf.data.TFRecordDataset(f).map(lambda r: (f, r)),
                           cycle_length=min(len(files), 8), num_parallel_calls=AUTOTUNE)
    else:
        if not (split_cfg.ann_file and split_cfg.img_prefix):
            raise ValueError("the split sets neither a tfrecord pattern nor ann_file + img_prefix")
        data = coco.load_coco(split_cfg.ann_file)
        kept = []
        for record, _, skipped, _ in tfrecord.coco_examples(data, split_cfg.img_prefix, with_mask):
            for kind, name, reason in skipped:
                log.warning("%s: skipped %s %s: %s", split_cfg.ann_file, kind, name, reason)
            if record is not None:
                kept.append(record)
        if not kept:
            raise ValueError(f"{split_cfg.ann_file}: no usable image under {split_cfg.img_prefix}")
        ds = tf.data.Dataset.from_tensor_slices(kept).map(lambda r: (tf.constant(split_cfg.ann_file), r))
        by_file = False
    if pipelines > 1 and not by_file:
        ds = ds.shard(pipelines, index)
    if training:
        ds = ds.shuffle(shuffle_buffer, seed=seed + index, reshuffle_each_iteration=True)
    return ds


def _has_gt(ex):
    boxes = ex["boxes"]
    positive = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return tf.reduce_any(positive & (ex["is_crowd"] == 0) & (ex["classes"] > 0))


def _decode_images(ds, policy, corrupt_images, deterministic):
    """Decodes `encoded` into `image` uint8 [h, w, 3]; an image that fails is skipped (and named) or stops all.

    A decode error inside a map would end the whole dataset, and `ignore_errors` alone would drop the image
    without saying which: so each image decodes in a one-element dataset that falls back to a marked
    placeholder, and the placeholder is reported with its source id.
    """
    def decode(ex):
        image = tf.io.decode_image(ex["encoded"], channels=3, dtype=tf.uint8, expand_animations=False)
        return dict(ex, image=image, decoded=tf.constant(True))

    def checked(ex):
        fallback = dict(ex, image=tf.zeros([0, 0, 3], tf.uint8), decoded=tf.constant(False))
        return (tf.data.Dataset.from_tensors(ex).map(decode).ignore_errors()
                .concatenate(tf.data.Dataset.from_tensors(fallback)).take(1))

    ds = ds.interleave(checked, cycle_length=16, block_length=1, num_parallel_calls=AUTOTUNE,
                       deterministic=deterministic)

    def describe(ex):
        return tf.strings.join(["source_id ", ex["source_id"], " (", ex["filename"], ") in ", ex["file"]])

    if policy == "error":
        def stop_if_corrupt(ex):
            check = tf.debugging.Assert(ex["decoded"], [tf.strings.join([
                _CHECK, ex["file"], ": corrupt image source_id ", ex["source_id"], " (", ex["filename"],
                "): it does not decode (data.corrupt_images: error; with skip, each such image is left out and "
                "named)"])])
            with tf.control_dependencies([check]):
                return dict(ex, image=tf.identity(ex["image"]))
        return ds.map(stop_if_corrupt)

    sink = corrupt_images if corrupt_images is not None else CorruptImages()

    def record(name):
        name = name.numpy().decode("utf8", "replace")
        sink.append(name)
        log.warning("skipped a corrupt image (%d so far): %s", len(sink), name)
        print(f"tfrcnn.data: skipped a corrupt image ({len(sink)} so far): {name}", file=sys.stderr)
        return False

    def keep_if_decoded(ex):
        return tf.cond(ex["decoded"], lambda: tf.constant(True),
                       lambda: tf.py_function(record, [describe(ex)], tf.bool))
    return ds.filter(keep_if_decoded)


class _Transform:
    """One decoded image + its objects → (normalized padded image, targets) at static shapes.

    Evaluation images go through `tfrcnn.inference.Transform`, as exported models' do; training draws a scale
    (multi-scale img_scale) and a flip, and always pads to the static canvas.
    """

    def __init__(self, data_cfg, with_mask, training, keep_source_id=False):
        self.cfg, self.with_mask, self.training, self.keep_source_id = data_cfg, with_mask, training, keep_source_id
        self.max_instances, self.crop = data_cfg.max_instances, data_cfg.mask_crop_size
        self.test = Transform(data_cfg)

    def __call__(self, ex, random_bits):
        seeds = tf.stack([random_bits, random_bits // 7 + 1])  # independent streams for scale and flip
        image = ex["image"]
        size = tf.shape(image)[:2]
        h, w = tf.cast(size[0], tf.float32), tf.cast(size[1], tf.float32)
        boxes = ex["boxes"] * tf.stack([h, w, h, w])
        boxes = tf.minimum(tf.maximum(boxes, 0.0), tf.stack([h, w, h, w]))
        valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]) & (ex["classes"] > 0)
        crowd = ex["is_crowd"] > 0
        masks = self._mask_crops(ex, boxes) if self.with_mask else None

        if self.training:
            new_size = self._random_size(h, w, seeds)
            scale = tf.cast(new_size, tf.float32) / tf.stack([h, w])
            image = resize_and_normalize(image, new_size, self.cfg.img_norm_cfg, self.cfg.normalize_before_resize)
        else:  # with test_padding 'size_divisor', each batch is then padded to its largest image (padded_batch)
            image, new_size, scale = self.test.preprocess(image)
        boxes = boxes * tf.tile(scale, [2])
        if self.training and self.cfg.flip_ratio > 0:
            flip = tf.random.stateless_uniform([], tf.cast(seeds[1], tf.int32) * [1, 1]) < self.cfg.flip_ratio
            new_w = tf.cast(new_size[1], tf.float32)
            image = tf.cond(flip, lambda: image[:, ::-1], lambda: image)
            boxes = tf.cond(flip, lambda: tf.stack(
                [boxes[:, 0], new_w - boxes[:, 3], boxes[:, 2], new_w - boxes[:, 1]], axis=1), lambda: boxes)
            if masks is not None:
                masks = tf.cond(flip, lambda: masks[:, :, ::-1], lambda: masks)
        if self.training:
            image = pad_to(image, *self.cfg.padded_size())

        keep = tf.where(valid & ~crowd)[:, 0]
        ignore = tf.where(valid & crowd)[:, 0]
        _warn_if_cut(tf.size(keep), self.max_instances, ex["source_id"])
        targets = {
            structures.GT_BOXES: self._pad(tf.gather(boxes, keep)),
            structures.GT_CLASSES: self._pad(tf.gather(ex["classes"], keep)),
            structures.IGNORE_BOXES: self._pad(tf.gather(boxes, ignore)),
            structures.IMAGE_SIZE: new_size,
        }
        if masks is not None:
            targets[structures.GT_MASKS] = self._pad(tf.gather(masks, keep))
        if self.keep_source_id or not self.training:
            targets[structures.SOURCE_ID] = ex["source_id"]
        if not self.training:
            targets[structures.ORIGINAL_SIZE] = size
            targets[structures.SCALE] = scale
        return image, targets

    def _random_size(self, h, w, seeds):
        """int32 (new_h, new_w): MMDetection's keep-ratio rescale to a (long, short) scale drawn from img_scale
        (multiscale_mode), within the static canvas."""
        cfg = self.cfg
        scales = tf.constant(cfg.scales(), tf.float32)  # [S, 2] (long, short)
        if len(cfg.scales()) == 1:
            long_side, short_side = (float(x) for x in self.test.scale)
        elif cfg.multiscale_mode == "range":
            u = tf.random.stateless_uniform([2], tf.cast(seeds[0], tf.int32) * [1, 1])
            lo, hi = tf.reduce_min(scales, 0), tf.reduce_max(scales, 0)
            # integer sides drawn uniformly from [lo, hi] inclusive, as np.random.randint(lo, hi + 1)
            drawn = tf.floor(lo + u * (hi - lo + 1.0))
            long_side, short_side = drawn[0], drawn[1]
        else:
            pick = tf.random.stateless_uniform([], tf.cast(seeds[0], tf.int32) * [1, 1], 0, len(cfg.scales()),
                                               dtype=tf.int32)
            long_side, short_side = scales[pick, 0], scales[pick, 1]
        return rescaled_size(h, w, long_side, short_side, cfg.keep_ratio, cfg.resize_rounding, fit=cfg.padded_size())

    def _mask_crops(self, ex, boxes):
        """float32 [N, S, S]: each full-image mask sampled at S × S bin centres over its box (original pixels)."""
        n = tf.shape(boxes)[0]
        count = tf.size(ex["masks"])
        check = tf.debugging.Assert(tf.equal(count, n), [tf.strings.join([
            _CHECK, ex["file"], ": source_id ", ex["source_id"], " has ", tf.strings.as_string(n), " objects but ",
            tf.strings.as_string(count), " masks, and the model has a mask head: ", _NO_MASKS_HINT])])
        with tf.control_dependencies([check]):
            full = tf.cond(n > 0, lambda: tf.map_fn(
                lambda png: tf.io.decode_png(png, channels=1), ex["masks"],
                fn_output_signature=tf.TensorSpec([None, None, 1], tf.uint8)),
                lambda: tf.zeros([0, 1, 1, 1], tf.uint8))
        full = tf.minimum(full, 1)  # 0/1 as Model Garden writes; 0/255 from other tools
        # A 1-pixel edge replica lets bin centres within half a pixel of the border read the edge pixel.
        full = tf.pad(full, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
        hp = tf.cast(tf.shape(full)[1] - 1, tf.float32)
        wp = tf.cast(tf.shape(full)[2] - 1, tf.float32)
        s = float(self.crop)
        y1, x1, y2, x2 = tf.unstack(boxes, 4, axis=1)
        # crop_and_resize samples top*(H-1) + i*(bottom-top)*(H-1)/(S-1): pick top/bottom so that sample i
        # lands on the bin centre y1 + (i + 0.5)(y2 - y1)/S (edge coordinates), +0.5 to pixel-centre indices,
        # +1 for the replicated edge, i.e. -0.5 + 1.
        first_y, last_y = y1 + 0.5 + 0.5 * (y2 - y1) / s, y1 + 0.5 + (s - 0.5) * (y2 - y1) / s
        first_x, last_x = x1 + 0.5 + 0.5 * (x2 - x1) / s, x1 + 0.5 + (s - 0.5) * (x2 - x1) / s
        frames = tf.stack([first_y / hp, first_x / wp, last_y / hp, last_x / wp], axis=1)
        crops = tf.image.crop_and_resize(full, frames, tf.range(n), [self.crop, self.crop])
        return crops[..., 0]

    def _pad(self, x):
        """The first max_instances rows of x, zero-padded to exactly max_instances."""
        x = x[: self.max_instances]
        padding = [[0, self.max_instances - tf.shape(x)[0]]] + [[0, 0]] * (x.shape.rank - 1)
        x = tf.pad(x, padding)
        x.set_shape([self.max_instances] + x.shape[1:].as_list())
        return x


def _warn_if_cut(count, limit, source_id):
    def warn():
        tf.print("tfrcnn.data: source_id", source_id, "has", count, "gt objects; data.max_instances keeps the first",
                 limit, output_stream=sys.stderr)
        return tf.constant(True)
    return tf.cond(count > limit, warn, lambda: tf.constant(False))
