"""The schema: MMDetection's config tree as dataclasses, with its names and its defaults.

The defaults are MMDetection's Mask R-CNN R50-FPN 1x on COCO, so `Config()` is that model. A section states the
values it takes in its field types, `_ranges` and `_checks`; `tfrcnn.config.validate` enforces them.
"""
import copy
from dataclasses import dataclass, field
from typing import Literal, Optional, Tuple, Union

from tfrcnn.config import validate
from tfrcnn.data.coco import COCO_CATEGORY_IDS, COCO_CLASSES


def _sub(cls, **kwargs):
    """A section-typed field whose default is a fresh `cls(**kwargs)` for every instance."""
    return field(default_factory=lambda: cls(**copy.deepcopy(kwargs)))


class _Section:
    """Behaviour shared by every config dataclass."""

    # Keys MMDetection has and tfrcnn has not: {key: what to do instead}, for an error that says so.
    _removed = {}
    # {field: the values it takes, as `in_range` reads them}: ">= 1", "> 0", "[0, 1]", "[0, 1)", "-1 or >= 0".
    # A tuple field's every element is checked.
    _ranges = {}

    def _checks(self):
        """Yields (key relative to this section, message) for values the field types cannot rule out."""
        return ()

    @classmethod
    def from_dict(cls, d, source="<dict>"):
        """Validates a plain nested dict (as read from YAML) into this section; raises ConfigError."""
        return validate.build(cls, d, "", validate.Origins(source))

    def to_dict(self):
        """Plain nested dicts, lists and scalars: what YAML holds and `from_dict` takes back."""
        return validate.plain(self)


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



__all__ = [name for name, value in dict(globals()).items()
           if isinstance(value, type) and issubclass(value, _Section) and not name.startswith("_")]
