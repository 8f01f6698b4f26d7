"""Tests of tfrcnn.config: shipped configs, `_base_` / `_delete_`, overrides, dump round trip, errors."""
import os
import re
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tfrcnn
from tfrcnn import config as C
from tfrcnn.config import (AnchorGeneratorCfg, Config, ConfigError, apply_overrides, dump_config, load_config,
                           save_config)

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
MASK = os.path.join(CONFIGS, "mask_rcnn_r50_fpn_1x_coco.yaml")
FASTER = os.path.join(CONFIGS, "faster_rcnn_r50_fpn_1x_coco.yaml")


def write(tmp_path, name, text):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return str(path)


def child_of_mask(tmp_path, text, name="x.yaml"):
    """A config file in tmp_path whose only base is the shipped Mask R-CNN config."""
    return write(tmp_path, name, f"_base_: {MASK}\n" + textwrap.dedent(text))


# --- shipped configs ----------------------------------------------------------------------------------


def test_package_exports_load_config():
    assert tfrcnn.load_config is load_config


def test_mask_rcnn_config_has_seed_values():
    cfg = load_config(MASK)
    m, tr, te = cfg.model, cfg.train_cfg, cfg.test_cfg
    assert m.type == "MaskRCNN" and m.with_mask and m.pretrained == "torchvision://resnet50"
    b = m.backbone
    assert (b.depth, b.frozen_stages, b.norm_eval, b.style) == (50, 1, True, "pytorch")
    assert m.backbone.out_indices == (0, 1, 2, 3)
    assert m.neck.in_channels == (256, 512, 1024, 2048) and m.neck.num_outs == 5 and m.neck.add_extra_convs is False
    ag = m.rpn_head.anchor_generator
    assert ag.scales == (8,) and ag.ratios == (0.5, 1.0, 2.0) and ag.strides == (4, 8, 16, 32, 64)
    assert m.rpn_head.loss_cls.use_sigmoid and m.rpn_head.loss_bbox.type == "L1Loss"
    assert m.rpn_head.bbox_coder.target_stds == (1, 1, 1, 1)
    assert m.roi_head.bbox_head.bbox_coder.target_stds == (0.1, 0.1, 0.2, 0.2)
    assert m.roi_head.bbox_head.num_classes == 80 and m.roi_head.bbox_head.fc_out_channels == 1024
    assert m.roi_head.bbox_roi_extractor.roi_layer.output_size == 7
    assert m.roi_head.bbox_roi_extractor.featmap_strides == (4, 8, 16, 32)
    assert m.roi_head.bbox_roi_extractor.finest_scale == 56
    assert m.roi_head.mask_roi_extractor.roi_layer.output_size == 14
    assert m.roi_head.mask_head.num_convs == 4 and m.roi_head.mask_head.loss_mask.use_mask
    # Static shapes: MMDetection's adaptive sampling_ratio 0 is shipped as 2.
    assert m.roi_head.bbox_roi_extractor.roi_layer.sampling_ratio == 2
    a = tr.rpn.assigner
    assert (a.pos_iou_thr, a.neg_iou_thr, a.min_pos_iou, a.ignore_iof_thr) == (0.7, 0.3, 0.3, -1)
    assert (tr.rpn.sampler.num, tr.rpn.sampler.pos_fraction, tr.rpn.sampler.add_gt_as_proposals) == (256, 0.5, False)
    assert (tr.rcnn.assigner.pos_iou_thr, tr.rcnn.assigner.neg_iou_thr, tr.rcnn.assigner.min_pos_iou) == (0.5,) * 3
    s = tr.rcnn.sampler
    assert (s.num, s.pos_fraction, s.neg_pos_ub, s.add_gt_as_proposals) == (512, 0.25, -1, True)
    assert tr.rcnn.mask_size == 28
    assert (te.rpn.nms_pre, te.rpn.max_per_img, te.rpn.nms_thr) == (1000, 1000, 0.7)
    r = te.rcnn
    assert (r.score_thr, r.nms.type, r.nms.iou_threshold) == (0.05, "nms", 0.5)
    assert (r.max_per_img, r.mask_thr_binary) == (100, 0.5)
    assert cfg.evaluation.metric == ("bbox", "segm")
    assert cfg.optimizer.lr == 0.02 and cfg.lr_config.step == (8, 11) and cfg.runner.max_epochs == 12


def test_faster_rcnn_config_has_no_mask_branch():
    cfg = load_config(FASTER)
    assert cfg.model.type == "FasterRCNN" and not cfg.model.with_mask
    assert cfg.model.roi_head.mask_head is None and cfg.model.roi_head.mask_roi_extractor is None
    assert cfg.evaluation.metric == ("bbox",)
    # MMDetection's Faster R-CNN: no low-quality matches in R-CNN (MMDetection's Mask R-CNN has them).
    assert cfg.train_cfg.rcnn.assigner.match_low_quality is False
    assert load_config(MASK).train_cfg.rcnn.assigner.match_low_quality is True
    assert cfg.train_cfg.rpn.assigner.pos_iou_thr == 0.7 and cfg.train_cfg.rcnn.sampler.num == 512


@pytest.mark.parametrize("name,model_type,steps,epochs,metric", [
    ("faster_rcnn_r50_fpn_1x_coco", "FasterRCNN", (8, 11), 12, ("bbox",)),
    ("faster_rcnn_r50_fpn_2x_coco", "FasterRCNN", (16, 22), 24, ("bbox",)),
    ("mask_rcnn_r50_fpn_1x_coco", "MaskRCNN", (8, 11), 12, ("bbox", "segm")),
    ("mask_rcnn_r50_fpn_2x_coco", "MaskRCNN", (16, 22), 24, ("bbox", "segm")),
    ("mask_rcnn_r50_fpn_3x_coco", "MaskRCNN", (27, 33), 36, ("bbox", "segm")),
])
def test_schedules(name, model_type, steps, epochs, metric):
    cfg = load_config(os.path.join(CONFIGS, name + ".yaml"))
    assert (cfg.model.type, cfg.lr_config.step, cfg.runner.max_epochs, cfg.evaluation.metric) == (
        model_type, steps, epochs, metric)
    # Everything else of the schedule is the 1x one: SGD 0.02, momentum 0.9, decay 1e-4, linear warmup 500.
    o, lr = cfg.optimizer, cfg.lr_config
    assert (o.lr, o.momentum, o.weight_decay, cfg.optimizer_config.grad_clip) == (0.02, 0.9, 1e-4, None)
    assert (lr.policy, lr.warmup, lr.warmup_iters, lr.warmup_ratio, lr.gamma) == ("step", "linear", 500, 0.001, 0.1)
    base = load_config(os.path.join(CONFIGS, name.replace("_2x", "_1x").replace("_3x", "_1x") + ".yaml"))
    if "_3x" in name:  # MMDetection's 3x trains multi-scale: the short side drawn from [640, 800]
        assert (cfg.data.img_scale, cfg.data.multiscale_mode) == (((1333, 640), (1333, 800)), "range")
        cfg.data.img_scale = base.data.img_scale
    assert cfg.model == base.model and cfg.data == base.data and cfg.runtime == base.runtime


def test_runtime_section():
    cfg = load_config(MASK)
    assert cfg.runtime == C.RuntimeCfg() == Config().runtime
    r = cfg.runtime
    assert (r.strategy, r.mixed_precision, r.jit_compile, r.seed) == ("one_device", None, False, 0)
    r = load_config(MASK, "runtime.strategy=multi_worker_mirrored,runtime.mixed_precision=mixed_bfloat16,"
                          "runtime.jit_compile=true,runtime.seed=7").runtime
    assert (r.strategy, r.mixed_precision, r.jit_compile, r.seed) == (
        "multi_worker_mirrored", "mixed_bfloat16", True, 7)
    r = load_config(MASK, "runtime={strategy: mirrored, mixed_precision: mixed_float16}").runtime
    assert (r.strategy, r.mixed_precision, r.jit_compile) == ("mirrored", "mixed_float16", False)


def test_defaults_are_the_shipped_mask_rcnn():
    assert Config() == load_config(MASK)


def _keys(tree, prefix=""):
    out = set()
    for k, v in tree.items():
        out.add(prefix + k)
        if isinstance(v, dict):
            out |= _keys(v, prefix + k + ".")
    return out


def test_shipped_base_files_spell_out_every_key():
    # Reads the merged YAML (private helper): no value of the shipped configs may come from a default.
    schema_keys = _keys(Config().to_dict())
    assert _keys(C.load._load_tree(MASK, [], {})) == schema_keys
    missing = schema_keys - _keys(C.load._load_tree(FASTER, [], {}))
    # Faster R-CNN leaves out only its null mask sections' contents and the mask-only numbers.
    assert all(".mask_" in k or k.endswith(("mask_size", "mask_thr_binary")) for k in missing), missing


# --- _base_ and _delete_ -----------------------------------------------------------------------------------


def test_base_chain_overrides_one_nested_key(tmp_path):
    write(tmp_path, "base/a.yaml", """\
        model:
          backbone: {depth: 101, frozen_stages: -1}
        optimizer: {lr: 0.01}
    """)
    child = write(tmp_path, "child.yaml", """\
        _base_: base/a.yaml
        model:
          backbone: {depth: 50}
    """)
    cfg = load_config(child)
    assert cfg.model.backbone.depth == 50  # the child wins
    assert cfg.model.backbone.frozen_stages == -1  # siblings of the overridden key stay the base's
    assert cfg.optimizer.lr == 0.01
    assert cfg.model.neck == Config().model.neck  # what no file sets is the default


def test_base_paths_are_relative_to_the_file_that_names_them(tmp_path):
    write(tmp_path, "a/b/deep.yaml", "log_config: {interval: 7}\n")
    write(tmp_path, "a/mid.yaml", "_base_: b/deep.yaml\ncheckpoint_config: {interval: 3}\n")
    cfg = load_config(write(tmp_path, "top.yaml", "_base_: [a/mid.yaml]\n"))
    assert (cfg.log_config.interval, cfg.checkpoint_config.interval) == (7, 3)


def test_list_of_bases_merges_left_to_right(tmp_path):
    write(tmp_path, "one.yaml", """\
        model:
          rpn_head:
            anchor_generator: {scales: [4, 8, 16], strides: [4, 8, 16, 32, 64]}
        runner: {max_epochs: 24}
    """)
    write(tmp_path, "two.yaml", """\
        model:
          rpn_head:
            anchor_generator: {scales: [2]}
        lr_config: {step: [16, 22]}
    """)
    cfg = load_config(write(tmp_path, "top.yaml", "_base_: [one.yaml, two.yaml]\nrunner: {max_epochs: 36}\n"))
    assert cfg.model.rpn_head.anchor_generator.scales == (2,)  # lists replace, they do not concatenate
    assert cfg.lr_config.step == (16, 22)
    assert cfg.runner.max_epochs == 36  # the file itself merges last


def test_delete_replaces_the_inherited_dict(tmp_path):
    write(tmp_path, "base.yaml", """\
        optimizer:
          lr: 0.01
          paramwise_cfg: {norm_decay_mult: 0.0, bias_decay_mult: 0.0}
    """)
    merged = load_config(write(tmp_path, "merge.yaml", """\
        _base_: base.yaml
        optimizer:
          paramwise_cfg: {bias_decay_mult: 2.0}
    """))
    assert (merged.optimizer.paramwise_cfg.norm_decay_mult, merged.optimizer.paramwise_cfg.bias_decay_mult) == (0, 2)
    replaced = load_config(write(tmp_path, "delete.yaml", """\
        _base_: base.yaml
        optimizer:
          paramwise_cfg: {_delete_: true, bias_decay_mult: 2.0}
    """))
    # norm_decay_mult 0.0 of the base is gone: the default 1.0 applies; lr (outside the deleted dict) stays.
    paramwise = replaced.optimizer.paramwise_cfg
    assert (paramwise.norm_decay_mult, paramwise.bias_decay_mult) == (1, 2)
    assert replaced.optimizer.lr == 0.01


def test_child_can_null_a_section_and_turn_mask_rcnn_into_faster(tmp_path):
    cfg = load_config(child_of_mask(tmp_path, """\
        model:
          type: FasterRCNN
          roi_head: {mask_roi_extractor: null, mask_head: null}
        evaluation: {metric: [bbox]}
    """))
    assert cfg.model.roi_head.mask_head is None and cfg.model.type == "FasterRCNN"


def test_base_cycle_is_an_error(tmp_path):
    write(tmp_path, "a.yaml", "_base_: b.yaml\n")
    write(tmp_path, "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match=r"b\.yaml: _base_ cycle: .*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        load_config(str(tmp_path / "a.yaml"))


def test_missing_base_file_names_its_absolute_path(tmp_path):
    path = write(tmp_path, "x.yaml", "_base_: [_base_/missing.yaml]\n")
    missing = os.path.join(str(tmp_path), "_base_", "missing.yaml")
    with pytest.raises(ConfigError, match=re.escape(f"{path}: _base_ file not found: {missing}")):
        load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "nope.yaml"))


# --- overrides -----------------------------------------------------------------------------------------


def test_overrides_scalar_list_bool_null():
    cfg = load_config(MASK, "train_cfg.rpn.assigner.pos_iou_thr=0.6,data.img_scale=[1024, 640],"
                            "model.backbone.norm_eval=false,model.pretrained=null,model.backbone.depth=101")
    assert cfg.train_cfg.rpn.assigner.pos_iou_thr == 0.6
    assert cfg.data.img_scale == (1024, 640)  # the comma inside brackets did not split the overrides
    assert cfg.model.backbone.norm_eval is False
    assert cfg.model.pretrained is None
    assert cfg.model.backbone.depth == 101


def test_overrides_commas_in_quotes_and_braces_and_a_null_section():
    cfg = load_config(MASK, "data.train.ann_file='a,b.json',optimizer_config.grad_clip={max_norm: 35, norm_type: 2},"
                            "train_cfg.rpn.assigner.neg_iou_thr=[0.0, 0.3]")
    assert cfg.data.train.ann_file == "a,b.json"
    assert (cfg.optimizer_config.grad_clip.max_norm, cfg.optimizer_config.grad_clip.norm_type) == (35.0, 2.0)
    assert cfg.train_cfg.rpn.assigner.neg_iou_thr == (0.0, 0.3)
    # A quote inside a plain scalar is text (YAML's rule), so the overrides after it still apply.
    cfg = load_config(MASK, "data.classes=[box,o'ring],data.category_ids=[5,7],data.train.ann_file=\"it's.json\","
                            "model.roi_head.bbox_head.num_classes=2,model.roi_head.mask_head.num_classes=2")
    assert cfg.data.classes == ("box", "o'ring") and cfg.data.category_ids == (5, 7)
    assert cfg.data.train.ann_file == "it's.json"
    with pytest.raises(ConfigError, match=r"--params_override: \"data\.train\.ann_file='a,b\.json\": the quote ' "):
        load_config(MASK, "data.img_scale=[64,64],data.train.ann_file='a,b.json")
    # A dotted key inside a null section fills it in; a mapping value merges into the section.
    cfg = load_config(MASK, ["optimizer_config.grad_clip.max_norm=10", "model.backbone={depth: 101}"])
    assert cfg.optimizer_config.grad_clip.max_norm == 10 and cfg.optimizer_config.grad_clip.norm_type == 2
    assert cfg.model.backbone.depth == 101 and cfg.model.backbone.frozen_stages == 1


def test_override_of_unknown_key_names_it():
    with pytest.raises(ConfigError, match=r"^--params_override: train_cfg\.rpn\.sampler\.nmu: unknown key"):
        load_config(MASK, "train_cfg.rpn.sampler.nmu=3")
    with pytest.raises(ConfigError, match=r"^--params_override: data\.img_scale\.x: unknown key"):
        load_config(MASK, "data.img_scale.x=1")
    with pytest.raises(ConfigError, match=r"--params_override: 'model\.backbone\.depth': expected key=value"):
        load_config(MASK, "model.backbone.depth")


def test_override_with_a_wrong_type_names_the_override():
    with pytest.raises(ConfigError, match=r"^--params_override: model\.backbone\.depth: expected int, got bool True"):
        load_config(MASK, "model.backbone.depth=true")


def test_apply_overrides_alone_returns_a_new_dict():
    tree = {"model": {"backbone": {"depth": 50}}}
    out = apply_overrides(tree, "model.backbone.depth=101,model.neck.num_outs=6", "cli")
    assert out == {"model": {"backbone": {"depth": 101}, "neck": {"num_outs": 6}}}
    assert tree == {"model": {"backbone": {"depth": 50}}}
    with pytest.raises(ConfigError, match=r"^cli: model\.nek: unknown key \(did you mean 'neck'\?\)"):
        apply_overrides(tree, "model.nek.num_outs=6", "cli")


@settings(max_examples=20, deadline=None)
@given(lr=st.floats(1e-6, 10.0), num=st.integers(1, 4096), flag=st.booleans(),
       neg=st.one_of(st.floats(0.0, 1.0), st.tuples(st.floats(0.0, 0.5), st.floats(0.5, 1.0))))
def test_overrides_round_trip_through_yaml(lr, num, flag, neg):
    neg_text = f"[{neg[0]!r}, {neg[1]!r}]" if isinstance(neg, tuple) else repr(neg)
    cfg = load_config(MASK, f"optimizer.lr={lr!r},train_cfg.rcnn.sampler.num={num},"
                            f"model.rpn_head.anchor_generator.scale_major={str(flag).lower()},"
                            f"train_cfg.rpn.assigner.neg_iou_thr={neg_text}")
    assert (cfg.optimizer.lr, cfg.train_cfg.rcnn.sampler.num) == (lr, num)
    assert cfg.model.rpn_head.anchor_generator.scale_major is flag
    assert cfg.train_cfg.rpn.assigner.neg_iou_thr == neg
    assert Config.from_dict(cfg.to_dict()) == cfg


# --- dump / load -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path,overrides", [(MASK, None), (FASTER, None),
                                            (MASK, "optimizer_config.grad_clip.max_norm=35,"
                                                   "train_cfg.rpn.assigner.neg_iou_thr=[0.1, 0.3]"),
                                            (MASK, "runtime={strategy: mirrored, mixed_precision: mixed_bfloat16}")])
def test_dump_then_load_gives_the_same_config(tmp_path, path, overrides):
    cfg = load_config(path, overrides)
    out = tmp_path / "run" / "config.yaml"
    save_config(cfg, str(out))
    assert out.read_text() == dump_config(cfg)
    assert "\n_base_:" not in out.read_text()
    assert load_config(str(out)) == cfg


def test_exponent_floats_without_a_dot_are_floats(tmp_path):
    # PyYAML (YAML 1.1) would read `1e-5` as a string; the loader reads it as a float.
    cfg = load_config(child_of_mask(tmp_path, "model: {backbone: {norm_cfg: {eps: 1e-3}}}\n"))
    assert cfg.model.backbone.norm_cfg.eps == 1e-3


def test_from_dict_names_its_source_and_sections_load_alone():
    with pytest.raises(ConfigError, match=r"^mine: model\.backbone\.depth: expected int, got str 'x'"):
        Config.from_dict({"model": {"backbone": {"depth": "x"}}}, source="mine")
    ag = AnchorGeneratorCfg.from_dict({"scales": None, "octave_base_scale": 4, "scales_per_octave": 3})
    assert ag.scales is None and ag.octave_base_scale == 4.0


# --- errors ------------------------------------------------------------------------------------------


def test_unknown_key_names_file_and_dotted_key(tmp_path):
    path = child_of_mask(tmp_path, "model: {backbone: {deph: 50}}\n")
    expected = f"{path}: model.backbone.deph: unknown key (did you mean 'depth'?)"
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_config(path)
    with pytest.raises(ConfigError, match=r"x\.yaml: trian_cfg: unknown key \(did you mean 'train_cfg'\?\)"):
        load_config(child_of_mask(tmp_path, "trian_cfg: {}\n"))


def test_error_names_the_base_file_that_set_the_value(tmp_path):
    bad = write(tmp_path, "_base_/bad.yaml", "model: {neck: {out_channels: many}}\n")
    path = write(tmp_path, "top.yaml", "_base_: _base_/bad.yaml\noptimizer: {lr: 0.01}\n")
    with pytest.raises(ConfigError, match=re.escape(f"{os.path.normpath(bad)}: model.neck.out_channels: expected int")):
        load_config(path)


@pytest.mark.parametrize("text,message", [
    ("model: {backbone: {depth: fifty}}", r"model\.backbone\.depth: expected int, got str 'fifty'"),
    ("model: {backbone: {depth: 152}}", r"model\.backbone\.depth: expected one of 18, 34, 50, 101, got int 152"),
    ("train_cfg: {rpn: {sampler: {num: true}}}", r"train_cfg\.rpn\.sampler\.num: expected int, got bool True"),
    ("optimizer: {lr: true}", r"optimizer\.lr: expected float, got bool True"),
    ("optimizer: {lr: null}", r"optimizer\.lr: expected float, got null"),
    ("runtime: {jit_compile: 1}", r"runtime\.jit_compile: expected bool, got int 1"),
    ("runtime: {seed: 0.5}", r"runtime\.seed: expected int, got float 0\.5"),
    ("model: {backbone: {norm_eval: 1}}", r"model\.backbone\.norm_eval: expected bool, got int 1"),
    ("data: {img_scale: [1333]}", r"data\.img_scale: expected \[int, int\] or \[\[int, int\], \.\.\.\], got list \[1333\]"),
    ("model: {neck: {in_channels: [256, x]}}", r"model\.neck\.in_channels\[1\]: expected int, got str 'x'"),
    ("train_cfg: {rpn: {assigner: {neg_iou_thr: [0.1]}}}",
     r"train_cfg\.rpn\.assigner\.neg_iou_thr: expected float or \[float, float\], got list \[0\.1\]"),
    ("model: {backbone: 3}", r"model\.backbone: expected a mapping, got int 3"),
    ("optimizer_config: {grad_clip: {norm_type: 2}}",
     r"optimizer_config\.grad_clip\.max_norm: required key is missing"),
])
def test_wrong_types_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=r"x\.yaml: " + message):
        load_config(child_of_mask(tmp_path, text + "\n"))


@pytest.mark.parametrize("text,message", [
    ("model: {backbone: {style: pytoch}}",
     r"model\.backbone\.style: expected one of 'pytorch', 'caffe', got str 'pytoch' \(did you mean 'pytorch'\?\)"),
    ("model: {roi_head: {bbox_roi_extractor: {roi_layer: {type: RoIWarp}}}}",
     r"model\.roi_head\.bbox_roi_extractor\.roi_layer\.type: expected one of 'RoIAlign', 'RoIPool'"),
    ("model: {rpn_head: {bbox_coder: {delta_clamp: below}}}",
     r"model\.rpn_head\.bbox_coder\.delta_clamp: expected one of 'both', 'above', got str 'below'"),
    ("model: {neck: {add_extra_convs: true}}",
     r"model\.neck\.add_extra_convs: expected one of false, 'on_input', 'on_output', got bool True"),
    ("model: {type: RetinaNet}", r"model\.type: expected one of 'MaskRCNN', 'FasterRCNN'"),
    ("evaluation: {metric: [bbox, keypoints]}", r"evaluation\.metric\[1\]: expected one of 'bbox', 'segm'"),
    ("runtime: {strategy: mirored}",
     r"runtime\.strategy: expected one of 'one_device', 'mirrored', 'multi_worker_mirrored', got str 'mirored' "
     r"\(did you mean 'mirrored'\?\)"),
    ("runtime: {mixed_precision: float16}",
     r"runtime\.mixed_precision: expected one of 'mixed_float16', 'mixed_bfloat16', got str 'float16'"),
])
def test_bad_choice_names_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=r"x\.yaml: " + message):
        load_config(child_of_mask(tmp_path, text + "\n"))


@pytest.mark.parametrize("text,message", [
    ("model: {roi_head: {bbox_roi_extractor: {roi_layer: {sampling_ratio: 0}}}}",
     r"model\.roi_head\.bbox_roi_extractor\.roi_layer\.sampling_ratio: must be >= 1, got 0: adaptive sampling"),
    ("model: {roi_head: {mask_roi_extractor: {roi_layer: {sampling_ratio: -1}}}}",
     r"model\.roi_head\.mask_roi_extractor\.roi_layer\.sampling_ratio: must be >= 1"),
    ("model: {type: FasterRCNN}", r"model\.roi_head\.mask_roi_extractor: model\.type FasterRCNN has no mask branch"),
    ("model: {roi_head: {mask_head: null}}", r"model\.roi_head\.mask_head: model\.type MaskRCNN needs it"),
    ("model: {roi_head: {bbox_head: {num_classes: 3}}}", r"model\.roi_head\.mask_head\.num_classes: 80 differs"),
    ("model: {roi_head: {bbox_head: {roi_feat_size: 14}}}", r"model\.roi_head\.bbox_head\.roi_feat_size: 14 differs"),
    ("model: {rpn_head: {anchor_generator: {octave_base_scale: 4, scales_per_octave: 3}}}",
     r"model\.rpn_head\.anchor_generator\.scales: give either scales or octave_base_scale"),
    ("model: {rpn_head: {anchor_generator: {base_sizes: [4, 8]}}}",
     r"model\.rpn_head\.anchor_generator\.base_sizes: 2 base sizes for 5 strides"),
    ("optimizer_config: {grad_clip: {max_norm: 0}}", r"optimizer_config\.grad_clip\.max_norm: must be > 0, got 0\.0"),
    ("optimizer_config: {grad_clip: {max_norm: 35, norm_type: 1}}",
     r"optimizer_config\.grad_clip\.norm_type: only the L2 norm \(2\) is implemented, got 1\.0"),
    ("model: {rpn_head: {loss_cls: {use_mask: true}}}",
     r"model\.rpn_head\.loss_cls\.use_mask: only false is implemented, got bool True"),
    ("model: {rpn_head: {loss_cls: {use_sigmoid: false}}}", r"rpn_head\.loss_cls\.use_sigmoid: only true is"),
    ("model: {roi_head: {bbox_head: {loss_cls: {use_sigmoid: true}}}}", r"bbox_head\.loss_cls\.use_sigmoid: only false"),
    ("model: {roi_head: {mask_head: {loss_mask: {use_mask: false}}}}", r"mask_head\.loss_mask\.use_mask: only true"),
    ("train_cfg: {rpn: {sampler: {add_gt_as_proposals: true}}}",
     r"train_cfg\.rpn\.sampler\.add_gt_as_proposals: only false is implemented"),
    ("data: {workers_per_gpu: 2}", r"data\.workers_per_gpu: not a tfrcnn key: tf\.data picks its own parallelism"),
    ("data: {samples_per_gpu: 0}", r"data\.samples_per_gpu: must be >= 1, got int 0"),
    ("optimizer: {lr: 0}", r"optimizer\.lr: must be > 0, got float 0\.0"),
    ("optimizer: {lr: -0.01}", r"optimizer\.lr: must be > 0, got float -0\.01"),
    ("test_cfg: {rcnn: {score_thr: 1.5}}", r"test_cfg\.rcnn\.score_thr: must be \[0, 1\], got float 1\.5"),
    ("train_cfg: {rcnn: {assigner: {neg_iou_thr: [0.1, 1.2]}}}",
     r"train_cfg\.rcnn\.assigner\.neg_iou_thr: must be \[0, 1\], got list"),
    ("train_cfg: {rpn: {assigner: {ignore_iof_thr: -0.5}}}", r"ignore_iof_thr: must be -1 or \[0, 1\]"),
    ("train_cfg: {rcnn: {sampler: {pos_fraction: 2}}}", r"sampler\.pos_fraction: must be \[0, 1\]"),
    ("model: {backbone: {frozen_stages: 5}}", r"model\.backbone\.frozen_stages: must be \[-1, 4\], got int 5"),
    ("runner: {max_epochs: 0}", r"runner\.max_epochs: must be >= 1"),
])
def test_value_checks(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(child_of_mask(tmp_path, text + "\n"))


def test_segm_metric_needs_a_mask_branch():
    with pytest.raises(ConfigError, match=r"evaluation\.metric: 'segm' needs a mask branch"):
        load_config(FASTER, "evaluation.metric=[bbox, segm]")


@pytest.mark.parametrize("text,message", [
    ("model: [1, 2\n", r"x\.yaml: invalid YAML"),
    ("- 1\n- 2\n", r"x\.yaml: expected a mapping at the top level, got list"),
    ("log_config: {interval: 1}\nlog_config: {interval: 2}\n", r"x\.yaml: invalid YAML: .*duplicate key 'log_config'"),
    ("_base_: 3\n", r"x\.yaml: _base_: expected a path or a list of paths, got int 3"),
    ("optimizer: {_delete_: yes please}\n", r"x\.yaml: optimizer\._delete_: expected bool"),
])
def test_malformed_files(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, "x.yaml", text))


def test_several_files_merge_in_order(tmp_path):
    first = write(tmp_path, "a.yaml", """\
        _base_: base.yaml
        optimizer: {lr: 0.01}
    """)
    write(tmp_path, "base.yaml", """\
        optimizer: {momentum: 0.5}
        model: {backbone: {depth: 101}}
    """)
    second = write(tmp_path, "b.yaml", """\
        model: {backbone: {frozen_stages: -1}}
        optimizer: {lr: 0.04}
    """)
    cfg = load_config([first, second], "optimizer.weight_decay=0.0")
    assert (cfg.optimizer.lr, cfg.optimizer.momentum, cfg.optimizer.weight_decay) == (0.04, 0.5, 0.0)
    assert (cfg.model.backbone.depth, cfg.model.backbone.frozen_stages) == (101, -1)
    with pytest.raises(ConfigError, match=r"base\.yaml: model\.backbone\.depth: expected one of"):
        write(tmp_path, "base.yaml", "model: {backbone: {depth: 7}}\n")
        load_config([first, second])
