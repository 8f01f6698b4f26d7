"""torchvision's Mask R-CNN / Faster R-CNN built as a tfrcnn config describes its model: the reference that
`scripts/benchmark.py --compare torchvision` and `benchmarks/torchvision_shapes.py` measure tfrcnn against.

`twin_settings(config)` reads what decides the work of a step from a tfrcnn `Config` (plain Python, no torch):
ResNet depth, frozen stages and norm, FPN widths, anchors, RPN and R-CNN sampling and proposal counts, head
widths, test-time limits, image size. `build_twin(settings)` (needs torch and torchvision) builds torchvision's
model from them:

  tfrcnn config                                     torchvision
  backbone.depth, norm_cfg, norm_eval               resnet{depth}(norm_layer=BatchNorm2d | FrozenBatchNorm2d | GroupNorm)
  backbone.frozen_stages k                          _resnet_fpn_extractor(trainable_layers=5 if k < 0 else 4 - k)
  neck.in_channels, out_channels                    BackboneWithFPN(in_channels_list, out_channels), LastLevelMaxPool
  rpn_head.anchor_generator scales x strides        AnchorGenerator(sizes per level, aspect_ratios = ratios, h / w)
  train_cfg.rpn.assigner / sampler                  rpn_fg/bg_iou_thresh, rpn_batch_size_per_image, positive_fraction
  train_cfg.rpn_proposal, test_cfg.rpn              rpn_pre/post_nms_top_n_train/test (pre is per level in both),
                                                    rpn_nms_thresh (training's)
  roi extractors' output_size, sampling_ratio       MultiScaleRoIAlign(P2..P5)
  bbox_head.fc_out_channels, num_classes            TwoMLPHead(C * 7 * 7, fc), FastRCNNPredictor(fc, classes + 1)
  train_cfg.rcnn.assigner / sampler                 box_fg/bg_iou_thresh, box_batch_size_per_image, positive_fraction
  test_cfg.rcnn score_thr, nms, max_per_img         box_score_thresh, box_nms_thresh, box_detections_per_img
  mask_head num_convs x conv_out_channels           MaskRCNNHeads(C, [conv_out] * num_convs), MaskRCNNPredictor
  image side                                        min_size = max_size = side (no resize of a square input)
  optimizer (SGD or AdamW), optimizer_config        torch.optim.SGD / AdamW, clip_grad_norm_ (`build_optimizer`)

MMDetection's norm_eval keeps BN's running statistics but still trains gamma and beta; FrozenBatchNorm2d freezes
them too (a few thousand parameters: no measurable work).

What torchvision cannot express is refused with a ValueError naming the key (an RPN conv wider or narrower than
its input, FPN extra convs, other than 5 pyramid levels, RoIPool). Differences in arithmetic that do not change
the work (RoIAlign `aligned`, L1 against smooth L1, the box coder's clamps) are not carried over: they are
torchvision's own whatever the config says; a config with torchvision's behaviours
(configs/torchvision/mask_rcnn_r18_fpn_shapes.yaml) computes what the twin computes. `copy_twin_weights` gives a
tfrcnn model the twin's weights, and `tfrcnn_batch` turns the twin's transformed batch into tfrcnn's, so that both
can train on the same numbers (tests/modeling/test_train_parity.py, benchmarks/train_parity.py).
"""


def twin_settings(config, image_size):
    """The settings `build_twin` takes, from a tfrcnn `Config`, for square inputs of side `image_size`.

    Returns a JSON-serializable dict (it travels to a worker process that imports torch, not TensorFlow).
    Raises ValueError for a model torchvision cannot build the same way.
    """
    m, train, test = config.model, config.train_cfg, config.test_cfg
    if m.rpn_head.feat_channels != m.rpn_head.in_channels:
        raise ValueError(f"model.rpn_head.feat_channels {m.rpn_head.feat_channels}: torchvision's RPNHead convolves "
                         f"at its input width, rpn_head.in_channels {m.rpn_head.in_channels}")
    if m.neck.add_extra_convs or m.neck.num_outs != 5 or m.neck.start_level != 0:
        raise ValueError("model.neck: torchvision's twin has P2-P6 with a max-pooled P6 (num_outs 5, start_level 0, "
                         "add_extra_convs false)")
    roi = m.roi_head
    extractors = [roi.bbox_roi_extractor] + ([roi.mask_roi_extractor] if m.with_mask else [])
    for name, e in zip(("bbox_roi_extractor", "mask_roi_extractor"), extractors):
        if e.roi_layer.type != "RoIAlign" or len(e.featmap_strides) != 4:
            raise ValueError(f"model.roi_head.{name}: torchvision's MultiScaleRoIAlign pools P2-P5 with RoIAlign")
    gen = m.rpn_head.anchor_generator
    if gen.scales is None:
        raise ValueError("model.rpn_head.anchor_generator: the twin needs scales (not octave_base_scale)")
    bases = gen.base_sizes or gen.strides
    norm = m.backbone.norm_cfg
    settings = {
        "with_mask": bool(m.with_mask),
        "image_size": int(image_size),
        "num_classes": int(roi.bbox_head.num_classes),
        "depth": int(m.backbone.depth),
        "trainable_layers": 5 if m.backbone.frozen_stages < 0 else 4 - m.backbone.frozen_stages,
        # MMDetection's norm_eval keeps BN on its running statistics: torchvision's FrozenBatchNorm2d.
        "norm": "GN" if norm.type == "GN" else ("frozen_bn" if m.backbone.norm_eval else "bn"),
        "norm_groups": int(norm.num_groups),
        "fpn_in_channels": [int(c) for c in m.neck.in_channels],
        "fpn_out_channels": int(m.neck.out_channels),
        "anchor_sizes": [[float(b * s) for s in gen.scales] for b in bases],
        "aspect_ratios": [float(r) for r in gen.ratios],
        "rpn": {"fg_iou_thresh": train.rpn.assigner.pos_iou_thr, "bg_iou_thresh": _upper(train.rpn.assigner.neg_iou_thr),
                "batch_size_per_image": train.rpn.sampler.num, "positive_fraction": train.rpn.sampler.pos_fraction,
                "pre_nms_top_n_train": train.rpn_proposal.nms_pre, "post_nms_top_n_train": train.rpn_proposal.max_per_img,
                "pre_nms_top_n_test": test.rpn.nms_pre, "post_nms_top_n_test": test.rpn.max_per_img,
                "nms_thresh": train.rpn_proposal.nms_thr},
        "box": {"output_size": roi.bbox_roi_extractor.roi_layer.output_size,
                "sampling_ratio": roi.bbox_roi_extractor.roi_layer.sampling_ratio,
                "fc_out_channels": roi.bbox_head.fc_out_channels,
                "fg_iou_thresh": train.rcnn.assigner.pos_iou_thr, "bg_iou_thresh": _upper(train.rcnn.assigner.neg_iou_thr),
                "batch_size_per_image": train.rcnn.sampler.num, "positive_fraction": train.rcnn.sampler.pos_fraction,
                "score_thresh": test.rcnn.score_thr, "nms_thresh": test.rcnn.nms.iou_threshold,
                "detections_per_img": test.rcnn.max_per_img,
                "reg_weights": [1.0 / s for s in roi.bbox_head.bbox_coder.target_stds]},
    }
    opt, clip, warmup = config.optimizer, config.optimizer_config.grad_clip, config.lr_config
    # The lr of the config's first step (tfrcnn's schedule starts there too): a timing run repeats one batch.
    first_lr = opt.lr * (warmup.warmup_ratio if warmup.warmup else 1.0)
    settings["optimizer"] = {"type": opt.type, "lr": first_lr, "weight_decay": opt.weight_decay,
                             "momentum": opt.momentum, "betas": None if opt.betas is None else list(opt.betas),
                             "eps": opt.eps, "grad_clip": None if clip is None else clip.max_norm}
    if m.with_mask:
        settings["mask"] = {"output_size": roi.mask_roi_extractor.roi_layer.output_size,
                            "sampling_ratio": roi.mask_roi_extractor.roi_layer.sampling_ratio,
                            "convs": [roi.mask_head.conv_out_channels] * roi.mask_head.num_convs}
    return settings


def _upper(neg_iou_thr):
    """torchvision's background threshold: the upper end of MMDetection's negative IoU band."""
    return float(neg_iou_thr[1] if isinstance(neg_iou_thr, (tuple, list)) else neg_iou_thr)


def build_optimizer(settings, model):
    """torch.optim.SGD or AdamW as `settings["optimizer"]` (the config's optimizer) over the twin's trainable
    parameters. The caller clips with torch.nn.utils.clip_grad_norm_ when settings["optimizer"]["grad_clip"]."""
    import torch
    o = settings["optimizer"]
    params = [p for p in model.parameters() if p.requires_grad]
    if o["type"] == "AdamW":
        return torch.optim.AdamW(params, lr=o["lr"], betas=tuple(o["betas"]), eps=o["eps"],
                                 weight_decay=o["weight_decay"])
    return torch.optim.SGD(params, lr=o["lr"], momentum=o["momentum"], weight_decay=o["weight_decay"])


def build_twin(settings):
    """torchvision's MaskRCNN (or FasterRCNN) from `twin_settings`, with random weights, in training mode."""
    import torch
    import torchvision
    from torchvision.models.detection import FasterRCNN, MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.ops import MultiScaleRoIAlign
    from torchvision.ops import misc as misc_nn_ops
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    s = settings
    norm_layer = {"bn": torch.nn.BatchNorm2d, "frozen_bn": misc_nn_ops.FrozenBatchNorm2d,
                  "GN": lambda c: torch.nn.GroupNorm(s["norm_groups"], c)}[s["norm"]]
    body = getattr(torchvision.models, f"resnet{s['depth']}")(weights=None, norm_layer=norm_layer)
    train_layers = ["layer4", "layer3", "layer2", "layer1", "conv1"][:s["trainable_layers"]]
    if s["trainable_layers"] == 5:
        train_layers.append("bn1")
    for name, parameter in body.named_parameters():  # as torchvision's _resnet_fpn_extractor freezes
        if not any(name.startswith(layer) for layer in train_layers):
            parameter.requires_grad_(False)
    backbone = BackboneWithFPN(body, {f"layer{k}": str(k - 1) for k in range(1, 5)}, s["fpn_in_channels"],
                               s["fpn_out_channels"], extra_blocks=LastLevelMaxPool())
    channels, classes = s["fpn_out_channels"], s["num_classes"] + 1
    anchors = AnchorGenerator(tuple(tuple(a) for a in s["anchor_sizes"]),
                              (tuple(s["aspect_ratios"]),) * len(s["anchor_sizes"]))
    rpn, box = s["rpn"], s["box"]
    levels = ["0", "1", "2", "3"]
    common = dict(
        min_size=s["image_size"], max_size=s["image_size"], rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=rpn["pre_nms_top_n_train"], rpn_post_nms_top_n_train=rpn["post_nms_top_n_train"],
        rpn_pre_nms_top_n_test=rpn["pre_nms_top_n_test"], rpn_post_nms_top_n_test=rpn["post_nms_top_n_test"],
        rpn_nms_thresh=rpn["nms_thresh"], rpn_fg_iou_thresh=rpn["fg_iou_thresh"],
        rpn_bg_iou_thresh=rpn["bg_iou_thresh"], rpn_batch_size_per_image=rpn["batch_size_per_image"],
        rpn_positive_fraction=rpn["positive_fraction"],
        box_roi_pool=MultiScaleRoIAlign(levels, box["output_size"], box["sampling_ratio"]),
        box_head=TwoMLPHead(channels * box["output_size"] ** 2, box["fc_out_channels"]),
        box_predictor=FastRCNNPredictor(box["fc_out_channels"], classes),
        box_score_thresh=box["score_thresh"], box_nms_thresh=box["nms_thresh"],
        box_detections_per_img=box["detections_per_img"], box_fg_iou_thresh=box["fg_iou_thresh"],
        box_bg_iou_thresh=box["bg_iou_thresh"], box_batch_size_per_image=box["batch_size_per_image"],
        box_positive_fraction=box["positive_fraction"], bbox_reg_weights=tuple(box["reg_weights"]))
    if not s["with_mask"]:
        return FasterRCNN(backbone, num_classes=None, **common)
    mask = s["mask"]
    return MaskRCNN(backbone, num_classes=None, **common,
                    mask_roi_pool=MultiScaleRoIAlign(levels, mask["output_size"], mask["sampling_ratio"]),
                    mask_head=MaskRCNNHeads(channels, mask["convs"], 1),
                    mask_predictor=MaskRCNNPredictor(mask["convs"][-1], mask["convs"][-1], classes))


def copy_twin_weights(twin, model):
    """Writes the twin's weights (and BN statistics) into the built tfrcnn `model` with tfrcnn's converter: both
    then start from the same point. Returns the number of tensors written."""
    from tfrcnn.convert.torchvision import load_detector
    state = {k: v.detach().cpu().numpy() for k, v in twin.state_dict().items()}
    return load_detector(model, state, source="the torchvision twin")


def tfrcnn_batch(image_list, targets, max_instances):
    """torchvision's batch after its transform (`images, targets = twin.transform(images, targets)`) as tfrcnn's
    training batch, the same numbers: (images float32 [B, H, W, 3], targets dict of numpy arrays).

    The images are already normalized and padded (zeros) by torchvision; boxes go from [x1, y1, x2, y2] to
    [y1, x1, y2, x2] in the same padded-input pixels; the full-image masks are padded to [B, M, H, W] and framed by
    `gt_mask_boxes` [0, 0, H, W] (tfrcnn.structures), so that tfrcnn reads the very masks torchvision reads.
    """
    import numpy as np
    images = image_list.tensors.detach().permute(0, 2, 3, 1).cpu().numpy().astype(np.float32)
    b, h, w = images.shape[:3]
    boxes = np.zeros([b, max_instances, 4], np.float32)
    classes = np.zeros([b, max_instances], np.int32)
    with_mask = "masks" in targets[0]
    masks = np.zeros([b, max_instances, h, w], np.float32) if with_mask else None
    for i, t in enumerate(targets):
        n = len(t["boxes"])
        if n > max_instances:
            raise ValueError(f"image {i} has {n} objects, more than max_instances {max_instances}")
        boxes[i, :n] = t["boxes"].cpu().numpy()[:, [1, 0, 3, 2]]
        classes[i, :n] = t["labels"].cpu().numpy()
        if with_mask:
            m = t["masks"].cpu().numpy()
            masks[i, :n, :m.shape[1], :m.shape[2]] = m
    batch = {"gt_boxes": boxes, "gt_classes": classes,
             "image_size": np.array([list(s) for s in image_list.image_sizes], np.int32)}
    if with_mask:
        batch["gt_masks"] = masks
        batch["gt_mask_boxes"] = np.tile(np.array([0, 0, h, w], np.float32), [b, max_instances, 1])
    return images, batch
