"""Every key of the config schema is read by the code that runs: a key that nothing reads cannot come back.

The test records each read of a config field while whole runs execute (train and evaluate through
`tfrcnn.training.train`, export a SavedModel, detect through it), keyed by the field's dotted path
(`train_cfg.rpn.sampler.add_gt_as_proposals`, not just the name), and fails for any field of the loaded config
that no run read. Loading the config (its validation) and writing it out (`to_dict`) are not reads.

Exempt, and listed here:
- fields whose type admits one value (`type: Literal["RPNHead"]`, `use_sigmoid: Literal[True]`): they document
  MMDetection's setting so that its configs port as they are, and another value is a ConfigError;
- READ_ELSEWHERE: fields read on a code path these runs cannot take, each with the path and the test that reads it.
"""
import contextlib
import dataclasses
import typing

import pytest

from tfrcnn import config as C
from tfrcnn.config import schema, validate
from tfrcnn.data.shapes import generate_shapes_dataset

SHAPES_CONFIG = "configs/mask_rcnn_r18_fpn_shapes.yaml"

# Runs that together take every value-dependent branch these tests can afford on a CPU.
RUNS = {
    # the main job's config: Mask R-CNN, AdamW with a clip, warmup, fixed pad_size, deterministic
    "main": "",
    # another optimizer, norm, anchors, resize and padding policy, a Faster R-CNN, SmoothL1 and RoIPool
    "variant": ("model.type=FasterRCNN,model.roi_head.mask_roi_extractor=null,model.roi_head.mask_head=null,"
                "evaluation.metric=[bbox],optimizer={type: SGD, betas: null, eps: null, momentum: 0.9},"
                "optimizer_config.grad_clip=null,lr_config.warmup=constant,"
                "model.backbone.norm_cfg={type: GN, num_groups: 8},model.neck.add_extra_convs=on_input,"
                "model.rpn_head.anchor_generator={scales: null, octave_base_scale: 4, scales_per_octave: 2,"
                " base_sizes: [4, 8, 16, 32, 64]},"
                "model.rpn_head.loss_bbox={type: SmoothL1Loss, beta: 0.11},"
                "model.roi_head.bbox_head.loss_bbox={type: SmoothL1Loss, beta: 1.0},"
                "model.roi_head.bbox_roi_extractor.roi_layer.type=RoIPool,"
                "data.img_scale=[[64, 48], [64, 64]],data.multiscale_mode=range,data.test_padding=size_divisor,"
                "train_cfg.rcnn.assigner.neg_iou_thr=[0.1, 0.5],runtime.deterministic=false,"
                # the COCO JSON and its images instead of TFRecords
                "data.train.tfrecord=null,data.val.tfrecord=null,data.test.tfrecord=null"),
}

# Fields no run here can reach, where they are read, and the test that covers that path.
READ_ELSEWHERE = {}


def _fields(section, prefix=""):
    """{dotted path: (section object, field name)} of every leaf and section field under `section`."""
    out = {}
    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        path = f"{prefix}{f.name}"
        out[path] = (section, f.name, hints[f.name])
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            out.update(_fields(value, path + "."))
    return out


def _one_value(tp):
    return typing.get_origin(tp) is typing.Literal and len(typing.get_args(tp)) == 1


@contextlib.contextmanager
def recording(config):
    """Records (path, field) of every field read on `config`'s sections (and on copies Keras makes of them via
    `Config.from_dict`, matched by path) while the block runs; yields the set of dotted paths read."""
    paths = {}

    def index(section, prefix=""):
        paths[id(section)] = prefix
        for f in dataclasses.fields(section):
            value = object.__getattribute__(section, f.name)
            if dataclasses.is_dataclass(value):
                index(value, f"{prefix}{f.name}.")

    index(config)
    read, quiet = set(), [0]
    original_getattribute = schema._Section.__getattribute__
    original_build, original_plain = validate.build, validate.plain

    def getattribute(self, name):
        value = object.__getattribute__(self, name)
        if not quiet[0] and not name.startswith("_"):
            prefix = paths.get(id(self))
            if prefix is not None and name in self.__dataclass_fields__:
                read.add(prefix + name)
        return value

    def unrecorded(function):
        def wrapped(*args, **kwargs):
            quiet[0] += 1
            try:
                result = function(*args, **kwargs)
            finally:
                quiet[0] -= 1
            if isinstance(result, C.Config):
                index(result)  # a model rebuilt from its Keras config reads the same paths
            return result
        return wrapped

    schema._Section.__getattribute__ = getattribute
    validate.build, validate.plain = unrecorded(original_build), unrecorded(original_plain)
    try:
        yield read
    finally:
        schema._Section.__getattribute__ = original_getattribute
        validate.build, validate.plain = original_build, original_plain


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return generate_shapes_dataset(str(tmp_path_factory.mktemp("shapes")), num_train=4, num_val=2, image_size=64,
                                   num_shards=1)


def _run(config, tmp_path):
    """Train two steps and evaluate, export, and detect through the export: what a user's run reads."""
    import numpy as np
    import tensorflow as tf

    from tfrcnn.export import export_saved_model
    from tfrcnn.training import checkpoints, trainer
    trainer.train(config, str(tmp_path / "run"), mode="train_and_eval", progress=False)
    model, config, _ = checkpoints.load_model(str(tmp_path / "run"))
    trainer.evaluate(config, model, split="test", max_images=1, progress=False)  # evaluate.py --split test
    export_saved_model(model, config, str(tmp_path / "export"), input_types=("image_tensor",))
    served = tf.saved_model.load(str(tmp_path / "export"))
    served.signatures["serving_default"](tf.constant(np.zeros((1, 40, 56, 3), np.uint8)))


def test_every_config_field_is_read(shapes, tmp_path):
    splits = dict(train=(shapes.train_tfrecords, shapes.train_annotations, shapes.train_image_dir),
                  val=(shapes.val_tfrecords, shapes.val_annotations, shapes.val_image_dir))
    splits["test"] = splits["val"]
    common = ("".join(f"data.{split}.tfrecord={records},data.{split}.ann_file={ann},data.{split}.img_prefix={images},"
                      for split, (records, ann, images) in splits.items()) +
              "data.img_scale=[64,64],data.pad_size=[64,64],"
              "runner.max_epochs=1,data.samples_per_gpu=2,checkpoint_config.interval=1,lr_config.warmup_iters=1,"
              "lr_config.step=[1],test_cfg.rcnn.score_thr=0.0")
    fields, read = {}, set()
    for name, extra in RUNS.items():
        config = C.load_config(SHAPES_CONFIG, [common, extra] if extra else [common])
        fields.update(_fields(config))
        with recording(config) as reads:
            _run(config, tmp_path / name)
        read |= reads
    unread = sorted(path for path, (_, _, tp) in fields.items()
                    if path not in read and not _one_value(tp) and path not in READ_ELSEWHERE)
    assert not unread, f"config fields no code path read: {unread}"
