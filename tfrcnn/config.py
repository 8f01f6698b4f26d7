"""Typed configuration: MMDetection's config tree as dataclasses, YAML with `_base_`, and overrides.

A config is YAML whose keys are MMDetection's names (`model.rpn_head.anchor_generator.scales`,
`train_cfg.rcnn.sampler.num`, `test_cfg.rcnn.score_thr`, ...). `load_config` reads a file, merges its
`_base_` files the way MMDetection's `Config` does, applies `--params_override` strings (`a.b=c,d.e=f`)
and validates the result against the dataclasses below. The defaults of the dataclasses are the
MMDetection's Mask R-CNN R50-FPN 1x values, so `Config()` is that model.

Validation is generic: it follows each field's type (`Literal` choices, `Optional`, `Union`, `Tuple`,
nested dataclasses); the few checks on values live in each section's `_checks`. Every failure is a
`ConfigError` whose message names the file (or override) that set the value and the dotted key.
"""
import copy
import dataclasses
import difflib
import functools
import os
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Literal, Optional, Tuple, Union

import yaml

OVERRIDE_SOURCE = "--params_override"


class ConfigError(ValueError):
    """A config that cannot be used; the message starts with `<file or override>: <dotted.key>: `."""


def _sub(cls, **kwargs):
    """A section-typed field whose default is a fresh `cls(**kwargs)` for every instance."""
    return field(default_factory=lambda: cls(**copy.deepcopy(kwargs)))


class _Section:
    """Behaviour shared by every config dataclass."""

    # Keys MMDetection has and tfrcnn has not: {key: what to do instead}, for an error that says so.
    _removed = {}
    # {field: the values it takes, as `_in_range` reads them}: ">= 1", "> 0", "[0, 1]", "[0, 1)", "-1 or >= 0".
    # A tuple field's every element is checked.
    _ranges = {}

    def _checks(self):
        """Yields (key relative to this section, message) for values the field types cannot rule out."""
        return ()

    @classmethod
    def from_dict(cls, d, source="<dict>"):
        """Validates a plain nested dict (as read from YAML) into this section; raises ConfigError."""
        return _build(cls, d, "", _Origins(source))

    def to_dict(self):
        """Plain nested dicts, lists and scalars: what YAML holds and `from_dict` takes back."""
        return _plain(self)


# ---------------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------------


@dataclass
class NormCfg(_Section):
    """`norm_cfg` of the backbone. A frozen BN is BN with `requires_grad: false` and `norm_eval: true`."""
    _ranges = {"eps": ">= 0", "num_groups": ">= 1"}
    type: Literal["BN", "GN"] = "BN"
    requires_grad: bool = True
    eps: float = 1.0e-5  # torchvision's COCO detection checkpoints use 0.0 (overwrite_eps on load)
    num_groups: int = 32  # GN only


@dataclass
class BackboneCfg(_Section):
    _ranges = {"num_stages": "[1, 4]", "out_indices": "[0, 3]", "frozen_stages": "[-1, 4]"}
    type: Literal["ResNet"] = "ResNet"
    depth: Literal[18, 34, 50, 101] = 50
    num_stages: int = 4
    out_indices: Tuple[int, ...] = (0, 1, 2, 3)  # C2..C5, strides 4, 8, 16, 32
    frozen_stages: int = 1  # stem + first stage keep their pretrained weights; -1 trains everything
    norm_cfg: NormCfg = _sub(NormCfg)
    norm_eval: bool = True  # BN running statistics stay the pretrained ones
    style: Literal["pytorch", "caffe"] = "pytorch"  # stride on the 3x3 conv (pytorch) or the 1x1 (caffe)


@dataclass
class NeckCfg(_Section):
    _ranges = {"in_channels": ">= 1", "out_channels": ">= 1", "num_outs": ">= 1", "start_level": ">= 0"}
    type: Literal["FPN"] = "FPN"
    in_channels: Tuple[int, ...] = (256, 512, 1024, 2048)
    out_channels: int = 256
    num_outs: int = 5
    start_level: int = 0
    # False: P6 = max-pool(kernel 1, stride 2) of P5; otherwise a 3x3 stride-2 conv on C5 or on P5.
    add_extra_convs: Literal[False, "on_input", "on_output"] = False
    # Conv weights at the start of training: "mmdet" Xavier uniform (MMDetection's FPN), "torchvision"
    # kaiming_uniform_(a=1), i.e. U(+-sqrt(3 / fan_in)) (torchvision's FeaturePyramidNetwork); biases 0.
    init: Literal["mmdet", "torchvision"] = "mmdet"


@dataclass
class AnchorGeneratorCfg(_Section):
    _ranges = {"scales": "> 0", "ratios": "> 0", "strides": ">= 1", "base_sizes": ">= 1",
               "octave_base_scale": "> 0", "scales_per_octave": ">= 1", "center_offset": "[0, 1)"}
    type: Literal["AnchorGenerator"] = "AnchorGenerator"
    scales: Optional[Tuple[float, ...]] = (8.0,)  # multiples of the base size: 8 * stride 4 = 32 px on P2
    ratios: Tuple[float, ...] = (0.5, 1.0, 2.0)  # h / w
    strides: Tuple[int, ...] = (4, 8, 16, 32, 64)
    base_sizes: Optional[Tuple[int, ...]] = None  # null: the strides
    octave_base_scale: Optional[float] = None  # with scales_per_octave, instead of scales (RetinaNet)
    scales_per_octave: Optional[int] = None
    center_offset: float = 0.0  # anchor centres at (i + center_offset) * stride
    scale_major: bool = True
    round_base_anchors: bool = False  # torchvision rounds base anchors to integers (half to even)
    strides_from_feature_size: bool = False  # torchvision: stride = padded size // feature size

    def _checks(self):
        octave = (self.octave_base_scale is not None, self.scales_per_octave is not None)
        if octave[0] != octave[1]:
            yield "octave_base_scale", "octave_base_scale and scales_per_octave are set together"
        elif (self.scales is not None) == all(octave):
            yield "scales", "give either scales or octave_base_scale + scales_per_octave (set the other to null)"
        if self.base_sizes is not None and len(self.base_sizes) != len(self.strides):
            yield "base_sizes", f"{len(self.base_sizes)} base sizes for {len(self.strides)} strides"


@dataclass
class BBoxCoderCfg(_Section):
    _ranges = {"target_stds": "> 0", "wh_ratio_clip": "(0, 1]"}
    type: Literal["DeltaXYWHBBoxCoder"] = "DeltaXYWHBBoxCoder"
    target_means: Tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # (dx, dy, dw, dh)
    target_stds: Tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)  # torchvision weights = 1 / stds
    wh_ratio_clip: float = 0.016  # dw, dh are bounded by |log(wh_ratio_clip)| = log(1000 / 16)
    delta_clamp: Literal["both", "above"] = "both"  # MMDetection bounds both sides, torchvision only above


@dataclass
class CrossEntropyLossCfg(_Section):
    """MMDetection's CrossEntropyLoss. Its two flags pick the loss, and each head implements one: the RPN's
    objectness is sigmoid (use_sigmoid true), the box head's classes softmax (both false), the mask head's
    per-pixel binary cross-entropy on the gt class's channel (use_mask true). The heads' own sections below fix
    them to that value, so an MMDetection config ports as it is and another value is an error, not ignored."""
    _ranges = {"loss_weight": ">= 0"}
    type: Literal["CrossEntropyLoss"] = "CrossEntropyLoss"
    use_sigmoid: bool = False
    use_mask: bool = False
    loss_weight: float = 1.0


@dataclass
class RPNLossClsCfg(CrossEntropyLossCfg):
    use_sigmoid: Literal[True] = True  # a 2-class softmax RPN is not implemented
    use_mask: Literal[False] = False


@dataclass
class BBoxLossClsCfg(CrossEntropyLossCfg):
    use_sigmoid: Literal[False] = False  # softmax over num_classes + 1 (background); no sigmoid classifier
    use_mask: Literal[False] = False


@dataclass
class MaskLossCfg(CrossEntropyLossCfg):
    use_sigmoid: Literal[False] = False
    use_mask: Literal[True] = True


@dataclass
class BBoxLossCfg(_Section):
    _ranges = {"beta": "> 0", "loss_weight": ">= 0"}
    type: Literal["L1Loss", "SmoothL1Loss"] = "L1Loss"
    beta: float = 1.0  # SmoothL1Loss only; torchvision uses 1/9
    loss_weight: float = 1.0


@dataclass
class RPNHeadCfg(_Section):
    _ranges = {"in_channels": ">= 1", "feat_channels": ">= 1"}
    type: Literal["RPNHead"] = "RPNHead"
    in_channels: int = 256
    feat_channels: int = 256
    anchor_generator: AnchorGeneratorCfg = _sub(AnchorGeneratorCfg)
    bbox_coder: BBoxCoderCfg = _sub(BBoxCoderCfg)
    loss_cls: RPNLossClsCfg = _sub(RPNLossClsCfg)
    loss_bbox: BBoxLossCfg = _sub(BBoxLossCfg)


@dataclass
class RoILayerCfg(_Section):
    _ranges = {"output_size": ">= 1"}
    type: Literal["RoIAlign", "RoIPool"] = "RoIAlign"
    output_size: int = 7
    sampling_ratio: int = 2  # RoIAlign samples per bin and axis
    aligned: bool = True  # shift by -0.5 px (MMDetection); torchvision's detectors use false

    def _checks(self):
        if self.sampling_ratio < 1:
            yield "sampling_ratio", (
                f"must be >= 1, got {self.sampling_ratio}: adaptive sampling (0) needs a per-RoI sample "
                "count, which static shapes cannot have; use 2 (torchvision / Detectron2)")


@dataclass
class RoIExtractorCfg(_Section):
    _ranges = {"out_channels": ">= 1", "featmap_strides": ">= 1", "finest_scale": "> 0"}
    type: Literal["SingleRoIExtractor"] = "SingleRoIExtractor"
    roi_layer: RoILayerCfg = _sub(RoILayerCfg)
    out_channels: int = 256
    featmap_strides: Tuple[int, ...] = (4, 8, 16, 32)  # P2..P5: RoIs never use P6
    finest_scale: int = 56  # level = floor(log2(sqrt(area) / 56 + 1e-6)), clamped to the levels


@dataclass
class BBoxHeadCfg(_Section):
    _ranges = {"in_channels": ">= 1", "fc_out_channels": ">= 1", "roi_feat_size": ">= 1", "num_classes": ">= 1"}
    type: Literal["Shared2FCBBoxHead"] = "Shared2FCBBoxHead"
    in_channels: int = 256
    fc_out_channels: int = 1024
    roi_feat_size: int = 7
    num_classes: int = 80  # without background
    bbox_coder: BBoxCoderCfg = _sub(BBoxCoderCfg, target_stds=(0.1, 0.1, 0.2, 0.2))
    reg_class_agnostic: bool = False  # false: 4 * num_classes regression outputs
    loss_cls: BBoxLossClsCfg = _sub(BBoxLossClsCfg)
    loss_bbox: BBoxLossCfg = _sub(BBoxLossCfg)
    # Weights at the start of training: "mmdet" Xavier-uniform shared FCs, fc_cls N(0, 0.01), fc_reg N(0, 0.001),
    # biases 0 (MMDetection's Shared2FCBBoxHead); "torchvision" PyTorch's nn.Linear defaults for all four
    # (TwoMLPHead, FastRCNNPredictor): weights and biases U(+-1 / sqrt(fan_in)).
    init: Literal["mmdet", "torchvision"] = "mmdet"


@dataclass
class MaskHeadCfg(_Section):
    _ranges = {"num_convs": ">= 0", "in_channels": ">= 1", "conv_out_channels": ">= 1", "num_classes": ">= 1"}
    type: Literal["FCNMaskHead"] = "FCNMaskHead"
    num_convs: int = 4
    in_channels: int = 256
    conv_out_channels: int = 256
    num_classes: int = 80
    loss_mask: MaskLossCfg = _sub(MaskLossCfg)
    # Kaiming-normal (fan_out) weights in both; biases 0 ("mmdet", MMDetection's FCNMaskHead), or for the
    # upsample and conv_logits PyTorch's conv default U(+-1 / sqrt(fan_in)) ("torchvision": MaskRCNNPredictor).
    init: Literal["mmdet", "torchvision"] = "mmdet"


@dataclass
class RoIHeadCfg(_Section):
    type: Literal["StandardRoIHead"] = "StandardRoIHead"
    bbox_roi_extractor: RoIExtractorCfg = _sub(RoIExtractorCfg)
    bbox_head: BBoxHeadCfg = _sub(BBoxHeadCfg)
    mask_roi_extractor: Optional[RoIExtractorCfg] = _sub(RoIExtractorCfg, roi_layer=RoILayerCfg(output_size=14))
    mask_head: Optional[MaskHeadCfg] = _sub(MaskHeadCfg)

    def _checks(self):
        if self.bbox_head.roi_feat_size != self.bbox_roi_extractor.roi_layer.output_size:
            yield "bbox_head.roi_feat_size", (
                f"{self.bbox_head.roi_feat_size} differs from bbox_roi_extractor.roi_layer.output_size "
                f"{self.bbox_roi_extractor.roi_layer.output_size}")
        if self.mask_head is not None and self.mask_head.num_classes != self.bbox_head.num_classes:
            yield "mask_head.num_classes", (
                f"{self.mask_head.num_classes} differs from bbox_head.num_classes {self.bbox_head.num_classes}")


@dataclass
class ModelCfg(_Section):
    type: Literal["MaskRCNN", "FasterRCNN"] = "MaskRCNN"
    # The backbone's starting weights (tfrcnn.convert.pretrained): torchvision://resnet18|34|50|101 (torchvision's
    # ImageNet file, e.g. resnet50-0676ba61.pth, read from torch.hub's cache $TORCH_HOME/hub/checkpoints or
    # ~/.cache/torch/hub/checkpoints, never downloaded), a .pth path, a tfrcnn checkpoint, or null (from scratch).
    pretrained: Optional[str] = "torchvision://resnet50"
    backbone: BackboneCfg = _sub(BackboneCfg)
    neck: NeckCfg = _sub(NeckCfg)
    rpn_head: RPNHeadCfg = _sub(RPNHeadCfg)
    roi_head: RoIHeadCfg = _sub(RoIHeadCfg)

    @property
    def with_mask(self):
        return self.type == "MaskRCNN"

    def _checks(self):
        for name in ("mask_roi_extractor", "mask_head"):
            present = getattr(self.roi_head, name) is not None
            if present and not self.with_mask:
                yield f"roi_head.{name}", f"model.type {self.type} has no mask branch: set it to null"
            if not present and self.with_mask:
                yield f"roi_head.{name}", f"model.type {self.type} needs it (null is for FasterRCNN)"


# ---------------------------------------------------------------------------------------------------
# train_cfg / test_cfg
# ---------------------------------------------------------------------------------------------------


@dataclass
class AssignerCfg(_Section):
    _ranges = {"pos_iou_thr": "[0, 1]", "neg_iou_thr": "[0, 1]", "min_pos_iou": "[0, 1]",
               "ignore_iof_thr": "-1 or [0, 1]"}
    type: Literal["MaxIoUAssigner"] = "MaxIoUAssigner"
    pos_iou_thr: float = 0.7
    neg_iou_thr: Union[float, Tuple[float, float]] = 0.3  # a [lo, hi) pair makes negatives an IoU band
    min_pos_iou: float = 0.3  # a gt's best match is positive if at least this (match_low_quality)
    match_low_quality: bool = True
    gt_max_assign_all: bool = True  # all candidates tied for a gt's best IoU get that gt
    ignore_iof_thr: float = -1.0  # -1: no ignore regions
    ignore_wrt_candidates: bool = True
    # The gt of a box that match_low_quality makes positive: "claiming", the gt whose best match it is (the last
    # such gt; MMDetection), or "best", the box's own highest-IoU gt (torchvision's and Detectron2's Matcher).
    low_quality_gt: Literal["claiming", "best"] = "claiming"


@dataclass
class SamplerCfg(_Section):
    _ranges = {"num": ">= 1", "pos_fraction": "[0, 1]", "neg_pos_ub": "-1 or >= 0"}
    type: Literal["RandomSampler"] = "RandomSampler"
    num: int = 256  # samples per image, positives + negatives
    pos_fraction: float = 0.5
    neg_pos_ub: float = -1.0  # at most neg_pos_ub negatives per positive; -1: no bound
    add_gt_as_proposals: bool = False


@dataclass
class RPNSamplerCfg(SamplerCfg):
    # The RPN samples anchors; gt boxes join the candidates only in the R-CNN stage (MMDetection's configs: false).
    add_gt_as_proposals: Literal[False] = False


@dataclass
class RPNTrainCfg(_Section):
    assigner: AssignerCfg = _sub(AssignerCfg)
    sampler: RPNSamplerCfg = _sub(RPNSamplerCfg)
    allowed_border: int = -1  # -1: anchors crossing the image border are trained too
    pos_weight: float = -1.0  # -1: positives weigh 1


@dataclass
class ProposalCfg(_Section):
    _ranges = {"nms_pre": ">= 1", "max_per_img": ">= 1", "nms_thr": "[0, 1]", "min_bbox_size": ">= 0"}
    nms_pre: int = 2000  # top-k per level before NMS
    max_per_img: int = 1000  # proposals kept per image after NMS
    nms_thr: float = 0.7
    min_bbox_size: float = 0.0
    nms_across_levels: bool = False


@dataclass
class MaskTargetCfg(_Section):
    """How a positive RoI's 28x28 mask target is read from its gt mask (RoIAlign of the mask on the RoI)."""
    # true: sample points at bin fractions of the RoI in pixel-centre coordinates (aligned RoIAlign, MMDetection);
    # false: torchvision's roi_align(aligned=False), RoI sides at least 1 px and half a pixel off.
    aligned: bool = True
    # Samples per bin side, averaged: k > 0 fixed, 0 adaptive, ceil(RoI side / mask_size) per RoI (MMDetection's
    # and torchvision's roi_align on the gt masks); 1 reads each bin centre once.
    sampling_ratio: int = 1
    # Targets thresholded at 0.5 (MMDetection), or kept soft in [0, 1] (torchvision).
    binarize: bool = True

    def _checks(self):
        if self.sampling_ratio < 0:
            yield "sampling_ratio", f"{self.sampling_ratio}: must be 0 (adaptive) or a positive count"


@dataclass
class RCNNTrainCfg(_Section):
    _ranges = {"mask_size": ">= 1"}
    # Mask R-CNN's as in MMDetection's mask_rcnn_r50_fpn; Faster R-CNN's base sets match_low_quality false.
    assigner: AssignerCfg = _sub(AssignerCfg, pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5)
    sampler: SamplerCfg = _sub(SamplerCfg, num=512, pos_fraction=0.25, add_gt_as_proposals=True)
    mask_size: int = 28
    mask_target: MaskTargetCfg = _sub(MaskTargetCfg)
    pos_weight: float = -1.0
    # The RoIs the mask head trains on. 'positives': the sampled positives only, as MMDetection and torchvision do;
    # their number varies from step to step (the one dynamic dimension of the train step; in a batch, up to the
    # largest count of its images). 'static': every positive slot, int(num * pos_fraction), the empty ones masked
    # out: static shapes throughout the train step (the same work every step, for XLA-compiled mask heads and
    # static-shape accelerators), at up to 128/k times the mask head's work when k positives are found. The losses
    # and gradients are the same.
    mask_rois: Literal["positives", "static"] = "positives"


@dataclass
class TrainCfg(_Section):
    rpn: RPNTrainCfg = _sub(RPNTrainCfg)
    rpn_proposal: ProposalCfg = _sub(ProposalCfg)
    rcnn: RCNNTrainCfg = _sub(RCNNTrainCfg)


@dataclass
class NMSCfg(_Section):
    _ranges = {"iou_threshold": "[0, 1]"}
    type: Literal["nms"] = "nms"
    iou_threshold: float = 0.5


@dataclass
class RCNNTestCfg(_Section):
    _ranges = {"score_thr": "[0, 1]", "max_per_img": ">= 1", "mask_thr_binary": "[0, 1]", "min_bbox_size": ">= 0"}
    score_thr: float = 0.05
    nms: NMSCfg = _sub(NMSCfg)
    max_per_img: int = 100
    mask_thr_binary: float = 0.5
    # Boxes (after decoding and clipping) with a width or height below this are dropped before NMS: torchvision
    # drops those under 1e-2 px; MMDetection keeps all (0).
    min_bbox_size: float = 0.0
    # How a 28x28 box-frame mask goes into the image (tfrcnn.ops.masks.paste_masks): 'mmdet' samples it at every
    # pixel centre and thresholds `>= mask_thr_binary`; 'torchvision' pastes as paste_masks_in_image (1-px zero
    # border, box grown by 30/28 and truncated to integers) and thresholds `> mask_thr_binary`.
    mask_paste: Literal["mmdet", "torchvision"] = "mmdet"


@dataclass
class TestCfg(_Section):
    __test__ = False  # not a pytest test class despite its name
    rpn: ProposalCfg = _sub(ProposalCfg, nms_pre=1000, max_per_img=1000)
    rcnn: RCNNTestCfg = _sub(RCNNTestCfg)


# ---------------------------------------------------------------------------------------------------
# data, schedule, runtime
# ---------------------------------------------------------------------------------------------------


@dataclass
class ImgNormCfg(_Section):
    _ranges = {"std": "> 0"}
    mean: Tuple[float, float, float] = (123.675, 116.28, 103.53)  # ImageNet RGB mean in 0..255
    std: Tuple[float, float, float] = (58.395, 57.12, 57.375)
    to_rgb: bool = True


@dataclass
class DatasetCfg(_Section):
    type: Literal["CocoDataset"] = "CocoDataset"
    ann_file: Optional[str] = None  # COCO JSON: the source when `tfrecord` is null, and the evaluation's gt
    img_prefix: Optional[str] = None  # the image folder of `ann_file`
    tfrecord: Optional[str] = None  # a file pattern (glob) of TFRecord shards; read instead of ann_file + img_prefix
    _removed = {"filter_empty_gt": "evaluation reads every image of its split; the key belongs to data.train"}


@dataclass
class TrainDatasetCfg(DatasetCfg):
    _removed = {}
    filter_empty_gt: bool = True  # training skips images without a (non-crowd) gt box, as MMDetection


# COCO 2017's 80 categories: model class c is category COCO_CATEGORY_IDS[c - 1], named COCO_CLASSES[c - 1].
COCO_CATEGORY_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33, 34,
    35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63,
    64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90)
COCO_CLASSES = (
    'person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train', 'truck', 'boat', 'traffic light',
    'fire hydrant', 'stop sign', 'parking meter', 'bench', 'bird', 'cat', 'dog', 'horse', 'sheep', 'cow',
    'elephant', 'bear', 'zebra', 'giraffe', 'backpack', 'umbrella', 'handbag', 'tie', 'suitcase', 'frisbee',
    'skis', 'snowboard', 'sports ball', 'kite', 'baseball bat', 'baseball glove', 'skateboard', 'surfboard',
    'tennis racket', 'bottle', 'wine glass', 'cup', 'fork', 'knife', 'spoon', 'bowl', 'banana', 'apple',
    'sandwich', 'orange', 'broccoli', 'carrot', 'hot dog', 'pizza', 'donut', 'cake', 'chair', 'couch',
    'potted plant', 'bed', 'dining table', 'toilet', 'tv', 'laptop', 'mouse', 'remote', 'keyboard', 'cell phone',
    'microwave', 'oven', 'toaster', 'sink', 'refrigerator', 'book', 'clock', 'vase', 'scissors', 'teddy bear',
    'hair drier', 'toothbrush')


@dataclass
class DataCfg(_Section):
    _ranges = {"samples_per_gpu": ">= 1", "size_divisor": ">= 1", "pad_size": ">= 1", "max_instances": ">= 1",
               "mask_crop_size": ">= 1", "shuffle_buffer": ">= 1"}
    _removed = {"workers_per_gpu": "tf.data picks its own parallelism (AUTOTUNE) for reading and decoding; "
                                   "delete the key"}
    samples_per_gpu: int = 2
    # (long side max, short side max), as MMDetection. A list of such pairs trains multi-scale: with
    # multiscale_mode 'range' (two pairs) each image draws its long and short side uniformly between them (the
    # 3x ms-train: [[1333, 640], [1333, 800]]); with 'value' it draws one of the pairs. Evaluation resizes to
    # the largest long and short sides.
    img_scale: Union[Tuple[int, int], Tuple[Tuple[int, int], ...]] = (1333, 800)
    multiscale_mode: Literal["range", "value"] = "range"
    keep_ratio: bool = True
    flip_ratio: float = 0.5
    size_divisor: int = 32
    # The static (height, width) every image is padded to in training, and at test time unless test_padding is
    # 'size_divisor'. null: a square whose side is the largest long side of img_scale rounded up to size_divisor
    # (1344 for 1333), which holds landscape and portrait images alike. A smaller pad_size also shrinks the
    # images that would not fit.
    pad_size: Optional[Tuple[int, int]] = None
    img_norm_cfg: ImgNormCfg = _sub(ImgNormCfg)
    # How keep-ratio resizing rounds the new sides: 'half_up' int(side * factor + 0.5) as MMDetection, or 'floor'
    # as torchvision (F.interpolate with a scale factor: 480x640 -> 800x1066).
    resize_rounding: Literal["half_up", "floor"] = "half_up"
    # Normalize before resizing (torchvision's GeneralizedRCNNTransform) instead of after (MMDetection). Bilinear
    # weights sum to 1, so the two orders differ only by float rounding.
    normalize_before_resize: bool = False
    # Evaluation and inference (exported models, predict.py) pad each batch to: 'pad_size', the static canvas
    # padded_size() (one shape for all images: XLA and TPU friendly); or 'size_divisor', its largest resized image
    # rounded up to size_divisor, as MMDetection's test-time Pad and torchvision's batching do (exactly their
    # features near the right and bottom borders, and torchvision's P6 anchor strides). Training always pads to
    # the static canvas.
    test_padding: Literal["pad_size", "size_divisor"] = "pad_size"
    max_instances: int = 100  # gt boxes (and crowd boxes) per image are padded (or cut, with a warning) to this
    mask_crop_size: int = 112  # gt masks are stored cropped to their boxes at this size
    # The dataset's category id of each model class, in class order (class c is category_ids[c - 1]), and
    # their names (MMDetection's `classes`). null: read from ann_file (its categories sorted by id).
    category_ids: Optional[Tuple[int, ...]] = COCO_CATEGORY_IDS
    classes: Optional[Tuple[str, ...]] = COCO_CLASSES
    # An image that does not decode: 'skip' drops it with a warning naming it and counts it; 'error' stops.
    corrupt_images: Literal["skip", "error"] = "skip"
    deterministic: bool = True  # tf.data yields in a fixed order (parallel maps still run in parallel)
    shuffle_buffer: int = 1000  # images; training only
    train: TrainDatasetCfg = _sub(TrainDatasetCfg, ann_file="data/coco/annotations/instances_train2017.json",
                             img_prefix="data/coco/train2017/", tfrecord="data/coco/tfrecord/train-*.tfrecord")
    val: DatasetCfg = _sub(DatasetCfg, ann_file="data/coco/annotations/instances_val2017.json",
                           img_prefix="data/coco/val2017/", tfrecord="data/coco/tfrecord/val-*.tfrecord")
    test: DatasetCfg = _sub(DatasetCfg, ann_file="data/coco/annotations/instances_val2017.json",
                            img_prefix="data/coco/val2017/", tfrecord="data/coco/tfrecord/val-*.tfrecord")

    def scales(self):
        """img_scale as a list of (long, short) pairs."""
        return [tuple(self.img_scale)] if isinstance(self.img_scale[0], int) else [tuple(s) for s in self.img_scale]

    def padded_size(self):
        """The static (height, width) of the padded network input."""
        if self.pad_size is not None:
            return tuple(self.pad_size)
        side = max(max(s) for s in self.scales())
        side = -(-side // self.size_divisor) * self.size_divisor
        return side, side

    def _checks(self):
        scales = self.scales()
        if self.multiscale_mode == "range" and len(scales) not in (1, 2):
            yield "img_scale", f"multiscale_mode 'range' takes two (long, short) pairs, got {len(scales)}"
        if any(min(s) <= 0 for s in scales):
            yield "img_scale", f"sides must be positive, got {list(scales)}"
        if self.pad_size is not None and any(p % self.size_divisor for p in self.pad_size):
            yield "pad_size", f"{list(self.pad_size)} is not a multiple of size_divisor {self.size_divisor}"
        if not 0.0 <= self.flip_ratio <= 1.0:
            yield "flip_ratio", f"must be in [0, 1], got {self.flip_ratio}"
        if self.category_ids is not None and len(set(self.category_ids)) != len(self.category_ids):
            yield "category_ids", "repeats an id"
        if None not in (self.classes, self.category_ids) and len(self.classes) != len(self.category_ids):
            yield "classes", f"{len(self.classes)} names for {len(self.category_ids)} category_ids"


@dataclass
class ParamwiseCfg(_Section):
    _ranges = {"norm_decay_mult": ">= 0", "bias_decay_mult": ">= 0"}
    norm_decay_mult: float = 1.0
    bias_decay_mult: float = 1.0


@dataclass
class OptimizerCfg(_Section):
    _ranges = {"lr": "> 0", "momentum": "[0, 1)", "eps": "> 0", "weight_decay": ">= 0"}
    # SGD: PyTorch's SGD with coupled L2 decay; AdamW: PyTorch's AdamW, decoupled decay (tfrcnn.training.optimizer)
    type: Literal["SGD", "AdamW"] = "SGD"
    lr: float = 0.02  # SGD: for 16 images per step (8 GPUs x 2)
    momentum: Optional[float] = None  # SGD only; null: 0.9
    betas: Optional[Tuple[float, float]] = None  # AdamW only; null: (0.9, 0.999)
    eps: Optional[float] = None  # AdamW only; null: 1e-8
    weight_decay: float = 1.0e-4
    paramwise_cfg: ParamwiseCfg = _sub(ParamwiseCfg)

    def __post_init__(self):
        # Each type's own defaults, so that the resolved config shows what runs; the other type's keys stay null
        # and `_checks` refuses them when set (torch.optim refuses them too: SGD(betas=...) is a TypeError).
        if self.type == "SGD" and self.momentum is None:
            self.momentum = 0.9
        if self.type == "AdamW":
            self.betas = (0.9, 0.999) if self.betas is None else self.betas
            self.eps = 1e-8 if self.eps is None else self.eps

    def _checks(self):
        others = {"SGD": ("betas", "eps"), "AdamW": ("momentum",)}[self.type]
        for name in others:
            if getattr(self, name) is not None:
                yield name, (f"is not an argument of {self.type} (inherited from a base config? set it to null, or "
                             "give the optimizer section '_delete_: true' in the config file to replace it whole)")
        if self.type == "AdamW" and not all(0.0 <= b < 1.0 for b in self.betas):
            yield "betas", f"must be in [0, 1), got {list(self.betas)}"


@dataclass
class GradClipCfg(_Section):
    max_norm: float  # the global L2 norm of all gradients, summed over replicas, is clipped to this
    norm_type: float = 2.0

    def _checks(self):
        if self.max_norm <= 0:
            yield "max_norm", f"must be > 0, got {self.max_norm}"
        if self.norm_type != 2:
            yield "norm_type", f"only the L2 norm (2) is implemented, got {self.norm_type}"


@dataclass
class OptimizerHookCfg(_Section):
    grad_clip: Optional[GradClipCfg] = None


@dataclass
class LrCfg(_Section):
    _ranges = {"warmup_iters": ">= 0", "warmup_ratio": "(0, 1]", "step": ">= 1", "gamma": "> 0"}
    policy: Literal["step"] = "step"
    warmup: Optional[Literal["linear", "constant"]] = "linear"
    warmup_iters: int = 500
    warmup_ratio: float = 0.001
    step: Tuple[int, ...] = (8, 11)  # epochs after which lr *= gamma
    gamma: float = 0.1


@dataclass
class RunnerCfg(_Section):
    _ranges = {"max_epochs": ">= 1"}
    type: Literal["EpochBasedRunner"] = "EpochBasedRunner"
    max_epochs: int = 12


@dataclass
class CheckpointCfg(_Section):
    _ranges = {"interval": ">= 1", "max_keep": ">= 1"}
    interval: int = 1  # epochs, or iterations with by_epoch false (MMDetection's CheckpointHook)
    by_epoch: bool = True
    max_keep: int = 5


@dataclass
class LogCfg(_Section):
    _ranges = {"interval": ">= 1"}
    interval: int = 50  # iterations


@dataclass
class EvaluationCfg(_Section):
    _ranges = {"interval": ">= 1"}
    interval: int = 1  # epochs
    metric: Tuple[Literal["bbox", "segm"], ...] = ("bbox", "segm")


@dataclass
class RuntimeCfg(_Section):
    """How a run executes: not in MMDetection's configs (there, launchers and `fp16 = dict(...)` decide)."""
    _ranges = {"seed": ">= 0"}
    # one_device: `fit` on the first GPU (else the CPU); mirrored: `fit` over this host's GPUs;
    # multi_worker_mirrored: tfrcnn's own loop over the hosts TF_CONFIG names (Keras' `fit` fails there).
    strategy: Literal["one_device", "mirrored", "multi_worker_mirrored"] = "one_device"
    # A Keras dtype policy: variables stay float32, layers compute in half precision, losses in float32.
    mixed_precision: Optional[Literal["mixed_float16", "mixed_bfloat16"]] = None
    jit_compile: bool = False  # XLA for the dense parts of the train step (not NMS, RoIAlign, the update)
    seed: int = 0  # sampling and data order; with `deterministic`, also the weights' initialization
    # TensorFlow's op determinism for the run (process-wide): the same config on the same kind of machine trains
    # the same weights bit for bit (tfrcnn.training.configure_determinism)
    deterministic: bool = False


@dataclass
class Config(_Section):
    """The whole tree; `Config()` is MMDetection's Mask R-CNN R50-FPN 1x on COCO."""
    model: ModelCfg = _sub(ModelCfg)
    train_cfg: TrainCfg = _sub(TrainCfg)
    test_cfg: TestCfg = _sub(TestCfg)
    data: DataCfg = _sub(DataCfg)
    optimizer: OptimizerCfg = _sub(OptimizerCfg)
    optimizer_config: OptimizerHookCfg = _sub(OptimizerHookCfg)
    lr_config: LrCfg = _sub(LrCfg)
    runner: RunnerCfg = _sub(RunnerCfg)
    checkpoint_config: CheckpointCfg = _sub(CheckpointCfg)
    log_config: LogCfg = _sub(LogCfg)
    evaluation: EvaluationCfg = _sub(EvaluationCfg)
    runtime: RuntimeCfg = _sub(RuntimeCfg)
    # A tfrcnn checkpoint (prefix or directory) copied by variable path over the pretrained backbone, weights only;
    # --init_checkpoint takes its place. Read only when model_dir has no checkpoint and resume_from is null.
    load_from: Optional[str] = None
    # A training run's checkpoint (or model_dir) to continue: weights, optimizer state and step. Wins over
    # load_from and model.pretrained; model_dir's own newest checkpoint wins over it.
    resume_from: Optional[str] = None

    def _checks(self):
        if "segm" in self.evaluation.metric and not self.model.with_mask:
            yield "evaluation.metric", f"'segm' needs a mask branch, which {self.model.type} has not"
        num_classes = self.model.roi_head.bbox_head.num_classes
        for key in ("category_ids", "classes"):
            given = getattr(self.data, key)
            if given is not None and len(given) != num_classes:
                yield f"data.{key}", f"{len(given)} entries for model.roi_head.bbox_head.num_classes {num_classes}"


# ---------------------------------------------------------------------------------------------------
# validation: dict tree -> dataclasses, driven by the field types
# ---------------------------------------------------------------------------------------------------


class _Origins:
    """Which file (or override) set each dotted key, so that an error points where the value came from."""

    def __init__(self, default, by_key=None):
        self.default = default
        self.by_key = {} if by_key is None else by_key

    def error(self, key, message):
        if not key:
            return ConfigError(f"{self.default}: {message}")
        parts = re.sub(r"\[\d+\]", "", key).split(".")
        for n in range(len(parts), 0, -1):
            source = self.by_key.get(".".join(parts[:n]))
            if source is not None:
                break
        else:
            source = self.default
        return ConfigError(f"{source}: {key}: {message}")


@functools.lru_cache(maxsize=None)
def _hints(cls):
    return typing.get_type_hints(cls)


def _join(key, name):
    return f"{key}.{name}" if key else str(name)


def _did_you_mean(name, candidates):
    close = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _unknown_key(name, known):
    return "unknown key" + (_did_you_mean(name, known) or f" (known: {', '.join(known)})")


def _scalar(value):
    """A Literal choice as YAML spells it: 'pytorch', false, 50."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _show(value):
    """The value as an error message shows it: its YAML-ish type and a short repr."""
    if value is None:
        return "null"
    kind = {dict: "mapping", list: "list", tuple: "list"}.get(type(value), type(value).__name__)
    text = repr(value)
    return f"{kind} {text if len(text) <= 60 else text[:57] + '...'}"


def _is_union(tp):
    return typing.get_origin(tp) in (Union, types.UnionType)


def _describe(tp):
    """A type as a message names it: int, [float, float], 'linear' or 'constant' or null, mapping, ..."""
    if dataclasses.is_dataclass(tp):
        return "mapping"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if _is_union(tp):
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    if origin is Literal:
        return " or ".join(_scalar(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"[{_describe(args[0])}, ...]"
        return f"[{', '.join(_describe(a) for a in args)}]"
    return tp.__name__


def _convert(tp, value, key, origins):
    """`value` (from YAML) checked against type `tp` and converted (lists → tuples, int → float)."""
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key, origins)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if _is_union(tp):
        if value is None and type(None) in args:
            return None
        arms = [a for a in args if a is not type(None)]
        if len(arms) == 1 and value is not None:  # Optional[X]: X's own message is the precise one
            return _convert(arms[0], value, key, origins)
        for arm in arms:
            try:
                return _convert(arm, value, key, origins)
            except ConfigError:
                pass
    elif origin is Literal:
        # Exact type match: YAML's `true` must not pass for 1, nor 1 for `true`.
        if any(type(value) is type(a) and value == a for a in args):
            return value
        kinds = {type(a) for a in args}
        if len(kinds) == 1 and type(value) not in kinds:
            raise origins.error(key, f"expected {next(iter(kinds)).__name__}, got {_show(value)}")
        if len(args) == 1:  # a key kept for MMDetection's configs, with the one value tfrcnn implements
            raise origins.error(key, f"only {_scalar(args[0])} is implemented, got {_show(value)}")
        hint = _did_you_mean(value, [a for a in args if isinstance(a, str)]) if isinstance(value, str) else ""
        raise origins.error(key, f"expected one of {', '.join(map(_scalar, args))}, got {_show(value)}{hint}")
    elif origin is tuple:
        if isinstance(value, (list, tuple)):
            if len(args) == 2 and args[1] is Ellipsis:
                args = (args[0],) * len(value)
            if len(args) == len(value):
                return tuple(_convert(a, v, f"{key}[{i}]", origins) for i, (a, v) in enumerate(zip(args, value)))
    elif tp is float:
        if type(value) in (int, float):
            return float(value)
    elif tp in (bool, int, str):
        if type(value) is tp:  # bool is an int subclass: `type() is` keeps `true` out of int fields
            return value
    else:
        raise TypeError(f"config field {key}: unsupported annotation {tp!r}")
    raise origins.error(key, f"expected {_describe(tp)}, got {_show(value)}")


def _build(cls, value, key, origins):
    """A plain dict validated into the dataclass `cls`: unknown, missing and mistyped keys are errors."""
    if not isinstance(value, dict):
        raise origins.error(key, f"expected a mapping, got {_show(value)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in value:
        if name in cls._removed:
            raise origins.error(_join(key, name), f"not a tfrcnn key: {cls._removed[name]}")
        if name not in fields:
            raise origins.error(_join(key, name), _unknown_key(name, list(fields)))
    kwargs = {}
    for name, f in fields.items():
        if name in value:
            kwargs[name] = _convert(_hints(cls)[name], value[name], _join(key, name), origins)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise origins.error(_join(key, name), "required key is missing")
    obj = cls(**kwargs)
    for name, rule in cls._ranges.items():
        value = getattr(obj, name)
        if value is not None and not all(_in_range(v, rule) for v in _flatten((value,))):
            raise origins.error(_join(key, name), f"must be {rule}, got {_show(value)}")
    for name, message in obj._checks():
        raise origins.error(_join(key, name), message)
    return obj


def _in_range(value, rule):
    """Whether a number satisfies a `_ranges` rule: "-1 or <rule>", ">= a", "> a", or an interval "[a, b)"."""
    if rule.startswith("-1 or "):
        return value == -1 or _in_range(value, rule[len("-1 or "):])
    if rule[0] in "[(":
        lo, hi = (float(x) for x in rule[1:-1].split(","))
        return (lo <= value if rule[0] == "[" else lo < value) and (value <= hi if rule[-1] == "]" else value < hi)
    op, bound = rule.split()
    return value >= float(bound) if op == ">=" else value > float(bound)


def _flatten(values):
    for v in values:
        yield from (_flatten(v) if isinstance(v, tuple) else (v,))


def _plain(value):
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------------
# YAML: reading, `_base_` and `_delete_`, overrides, dumping
# ---------------------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """yaml.SafeLoader that reads `1e-5` as a float (YAML 1.1 wants `1.0e-5`) and rejects duplicate keys."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


class _Dumper(yaml.SafeDumper):
    """Lists in flow style (`[4, 8, 16]`), mappings in block style."""


_Dumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))


def _read_yaml(path):
    try:
        with open(path, encoding="utf-8") as f:
            tree = yaml.load(f, Loader=_Loader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {_show(tree)}")
    return tree


def _merge(base, child, source, origins, prefix=""):
    """`child` merged onto `base` (new dicts): dicts merge recursively, other values replace.

    A dict in `child` with `_delete_: true` replaces the inherited dict instead. Each key `child` sets is
    recorded in `origins` (dotted key → `source`) when `origins` is given.
    """
    out = dict(base)
    for name, value in child.items():
        key = _join(prefix, name)
        if isinstance(value, dict):
            value = dict(value)
            delete = value.pop("_delete_", False)
            if not isinstance(delete, bool):
                raise ConfigError(f"{source}: {key}._delete_: expected bool, got {_show(delete)}")
            inherited = out.get(name) if isinstance(out.get(name), dict) and not delete else {}
            value = _merge(inherited, value, source, origins, key)
        out[name] = value
        if origins is not None:
            origins[key] = source
    return out


def _load_tree(path, chain, origins):
    """The merged dict of `path` and its `_base_` files; `chain` lists the files that include this one."""
    chain = chain + [path]
    tree = _read_yaml(path)
    bases = tree.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: _base_: expected a path or a list of paths, got {_show(bases)}")
    merged = {}
    for base in bases:
        base_path = os.path.normpath(os.path.join(os.path.dirname(path), base))
        if not os.path.isfile(base_path):
            raise ConfigError(f"{path}: _base_ file not found: {os.path.abspath(base_path)}")
        reals = [os.path.realpath(p) for p in chain]
        if os.path.realpath(base_path) in reals:
            cycle = chain[reals.index(os.path.realpath(base_path)):] + [base_path]
            raise ConfigError(f"{path}: _base_ cycle: {' -> '.join(cycle)}")
        # Bases load (and record origins) in merge order, so the last writer of a key is its origin.
        merged = _merge(merged, _load_tree(base_path, chain, origins), path, None)
    return _merge(merged, tree, path, origins)


def _split_overrides(text, source=OVERRIDE_SOURCE):
    """Splits `a=1,b=[1, 2],c='x,y'` at the commas outside brackets and quoted scalars.

    As in YAML, a quote opens a quoted scalar only where a scalar starts (after `=`, a bracket, a comma, a colon
    or a space): in `classes=[box,o'ring],b=2` the apostrophe is part of `o'ring` and `b=2` is its own override.
    """
    items, depth, quote, start, previous = [], 0, None, 0, "="
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"" and previous in "=[{(,: ":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
        previous = ch
    if quote:
        raise ConfigError(f"{source}: {text[start:].strip()!r}: the quote {quote} opened here is never closed")
    items.append(text[start:])
    return [item.strip() for item in items if item.strip()]


def _section_type(tp):
    """The dataclass behind a field type (`X` or `Optional[X]`), or None for a leaf."""
    if dataclasses.is_dataclass(tp):
        return tp
    if _is_union(tp):
        inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        return inner[0] if len(inner) == 1 else None
    return None


def apply_overrides(tree, overrides, source=OVERRIDE_SOURCE, schema=Config, origins=None):
    """A copy of the dict `tree` with `overrides` applied.

    Args:
      tree: nested dict, e.g. a YAML file with its `_base_` merged.
      overrides: `a.b=c,d.e=f` (or a list of such strings). Values are YAML (`0.5`, `true`, `null`,
        `[1333, 800]`, `{max_norm: 35}`, strings); commas inside brackets or quotes do not split.
        A mapping value merges into the existing section, as a `_base_` child would.
      source: names the overrides in error messages.
      schema: the dataclass the keys must exist in; an unknown key is a ConfigError naming it.
      origins: optional dict (dotted key → source) updated with the keys set here.
    """
    tree = copy.deepcopy(tree)
    if not isinstance(overrides, str):
        for item in overrides:
            tree = apply_overrides(tree, item, source, schema, origins)
        return tree
    for item in _split_overrides(overrides, source):
        dotted, eq, text = item.partition("=")
        dotted = dotted.strip()
        if not eq or not dotted:
            raise ConfigError(f"{source}: {item!r}: expected key=value")
        try:
            value = yaml.load(text, Loader=_Loader)
        except yaml.YAMLError as e:
            raise ConfigError(f"{source}: {dotted}: value {text!r} is not valid YAML: {e}") from None
        node, cls, parts = tree, schema, dotted.split(".")
        for i, name in enumerate(parts):
            key = ".".join(parts[: i + 1])
            if cls is None:
                raise ConfigError(f"{source}: {key}: unknown key ({'.'.join(parts[:i])} is a value, not a section)")
            hints = _hints(cls)
            if name in cls._removed:
                raise ConfigError(f"{source}: {key}: not a tfrcnn key: {cls._removed[name]}")
            if name not in hints:
                raise ConfigError(f"{source}: {key}: {_unknown_key(name, list(hints))}")
            if i == len(parts) - 1:
                if isinstance(value, dict):
                    value = _merge(node.get(name) if isinstance(node.get(name), dict) else {}, value, source,
                                   origins, key)
                node[name] = value
                if origins is not None:
                    origins[key] = source
            else:
                cls = _section_type(hints[name])
                if not isinstance(node.get(name), dict):
                    node[name] = {}  # e.g. a null optional section (grad_clip) that the override fills in
                    if origins is not None:
                        origins[key] = source
                node = node[name]
    return tree


def load_config(path, overrides=None):
    """Reads the YAML config at `path`, resolves `_base_`, applies `overrides` and validates.

    Args:
      path: a YAML file; its `_base_` (a path or list of paths, relative to the file) merge first, left
        to right, then the file itself. A list of files merges them in order, each (with its bases) onto
        the previous ones, as repeated `--config_file` flags do.
      overrides: optional `a.b=c,d.e=f` string (or list of them), as `--params_override` takes.
    Returns:
      The `Config`. Raises `ConfigError` naming the file (or override) and dotted key of any problem.
    """
    paths = [os.fspath(p) for p in (path if isinstance(path, (list, tuple)) else [path])]
    if not paths:
        raise ConfigError("no config file given")
    by_key, tree = {}, {}
    for p in paths:
        if not os.path.isfile(p):
            raise ConfigError(f"{p}: config file not found: {os.path.abspath(p)}")
        layer_keys = {}
        layer = _load_tree(p, [], layer_keys)
        tree = _merge(tree, layer, p, by_key) if tree else layer
        by_key.update(layer_keys)
    if overrides:
        tree = apply_overrides(tree, overrides, origins=by_key)
    return _build(Config, tree, "", _Origins(paths[-1], by_key))


def dump_config(cfg):
    """The resolved config as YAML text; `load_config` of it gives back an equal `Config`."""
    header = "# Resolved tfrcnn config: every value the run used, base files merged in.\n"
    return header + yaml.dump(cfg.to_dict(), Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=110)


def save_config(cfg, path):
    """Writes `dump_config(cfg)` to `path` (e.g. next to the checkpoints), creating its directory."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(dump_config(cfg))
