"""Training parity with torchvision: the same weights and batch give torchvision's five losses, gradients and
optimizer steps.

A torchvision Mask R-CNN with random weights (the main job's ResNet-18 / 64-channel model built by
benchmarks/torchvision_twin.py from configs/torchvision/mask_rcnn_r18_fpn_shapes.yaml, and COCO_V1's R50-FPN from
tests/torchvision_detection.py) is converted into tfrcnn with tfrcnn's converter. Three images of different sizes
(192 px long sides: torchvision's transform keeps them as they are) with gt boxes and full-image masks go into both.

Sampling is random in both libraries, so the samplers are given more slots than there are candidates: both take
every positive and every negative anchor, and every positive and negative RoI. The R-CNN stage of both reads
torchvision's training proposals (an NMS near-tie can swap one box between two libraries' proposals, which moves a
loss by ~1e-3); tfrcnn's own training proposals are compared with them separately.

Tolerances: each loss within 1e-4 relative; every gradient at cosine >= 0.9999 and norm within 1e-3 relative; after
two optimizer steps on the same gradients (momentum / moments included), every weight within 1e-5 relative and every
update within 1e-3 relative (plus float32's rounding of the weights).

The gradients are compared twice: tfrcnn's float32 ones (the cosine), and tfrcnn's from a float64 copy of the model
(the cosine and the norm), as torchvision's reference is float64 too. float32 rounding alone moves the norms of a
random ResNet-50's layer2/layer3 gradients by about 1e-3, in either library and by an amount that depends on the CPU:
torchvision's own float32 gradients of such a backbone are 1.4e-3 (relative) off its float64 ones, tfrcnn's 1.6e-3,
on a 2-core Intel Xeon (AMX), where the float32 norm check failed; the float64 copy agrees within 1.3e-4.
"""
import math
import os
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
import torch

import tfrcnn
from tfrcnn.convert.torchvision import detector_targets
from tfrcnn.training.optimizer import build_optimizer
from torchvision_detection import box_iou, reference_detector

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from torchvision_twin import build_optimizer as build_torch_optimizer  # noqa: E402
from torchvision_twin import build_twin, copy_twin_weights, tfrcnn_batch, twin_settings  # noqa: E402

SHAPES = os.path.join(ROOT, "configs", "torchvision", "mask_rcnn_r18_fpn_shapes.yaml")
R50 = os.path.join(ROOT, "configs", "torchvision", "maskrcnn_resnet50_fpn_coco.yaml")
SIDE = 192
SIZES = [(192, 160), (144, 192), (192, 192)]
MAX_INSTANCES = 4
LOSS_NAMES = {"rpn_cls": "loss_objectness", "rpn_bbox": "loss_rpn_box_reg", "rcnn_cls": "loss_classifier",
              "rcnn_bbox": "loss_box_reg", "mask": "loss_mask"}


def scenes(num_classes, seed=0):
    """[(uint8 image [H, W, 3], boxes [N, 4] x1y1x2y2, labels [N], masks uint8 [N, H, W])] for SIZES: ellipses and
    rectangles on blocky noise (and a thin bar in the first image), inside the image (no mask touches a border, where the two libraries' roi_align of
    the padded masks would read padding differently)."""
    rng = np.random.default_rng(seed)
    out = []
    for h, w in SIZES:
        image = np.kron(rng.integers(40, 200, (h // 16, w // 16, 3)), np.ones((16, 16, 1))).astype(np.float64)
        boxes, labels, masks = [], [], []
        for k in range(3):
            bh, bw = rng.integers(24, 80), rng.integers(24, 80)
            y1, x1 = rng.integers(4, h - bh - 4), rng.integers(4, w - bw - 4)
            yy, xx = np.mgrid[:h, :w]
            if k % 2 == 0:
                cy, cx = y1 + bh / 2, x1 + bw / 2
                mask = ((yy + 0.5 - cy) / (bh / 2)) ** 2 + ((xx + 0.5 - cx) / (bw / 2)) ** 2 <= 1
            else:
                mask = (yy >= y1) & (yy < y1 + bh) & (xx >= x1) & (xx < x1 + bw)
            image[mask] = rng.integers(0, 256, 3)
            ys, xs = np.nonzero(mask)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            labels.append(int(rng.integers(1, num_classes + 1)))
            masks.append(mask.astype(np.uint8))
        if not out:  # a thin bar: its best anchor's IoU is under 0.3, a match only allow_low_quality_matches makes
            mask = np.zeros((h, w), bool)
            mask[170:175, 20:60] = True
            image[mask] = (250, 250, 250)
            boxes.append([20, 170, 60, 175])
            labels.append(1)
            masks.append(mask.astype(np.uint8))
        out.append((image.astype(np.uint8), np.array(boxes, np.float32), np.array(labels), np.stack(masks)))
    return out


def torch_inputs(samples):
    images = [torch.from_numpy(s[0]).permute(2, 0, 1).double() / 255 for s in samples]
    targets = [{"boxes": torch.from_numpy(s[1]).double(), "labels": torch.from_numpy(s[2]).long(),
                "masks": torch.from_numpy(s[3])} for s in samples]
    return images, targets


def take_every_candidate(config, anchors_per_image):
    """Sampler sizes over the number of candidates (config overrides): both libraries sample everything."""
    rpn_num = 2 * anchors_per_image + 2
    rcnn_num = 4 * (config.train_cfg.rpn_proposal.max_per_img + MAX_INSTANCES)
    return f"train_cfg.rpn.sampler.num={rpn_num},train_cfg.rcnn.sampler.num={rcnn_num}"


def configure_torchvision(twin, config):
    """The torchvision detector's training numbers set to the tfrcnn config's (what build_twin does from it)."""
    train = config.train_cfg
    twin.rpn.fg_bg_sampler.batch_size_per_image = train.rpn.sampler.num
    twin.rpn._pre_nms_top_n = dict(training=train.rpn_proposal.nms_pre, testing=train.rpn_proposal.nms_pre)
    twin.rpn._post_nms_top_n = dict(training=train.rpn_proposal.max_per_img, testing=train.rpn_proposal.max_per_img)
    twin.roi_heads.fg_bg_sampler.batch_size_per_image = train.rcnn.sampler.num


def anchor_count(side=SIDE, strides=(4, 8, 16, 32, 64), per_location=3):
    return sum(math.ceil(side / s) ** 2 * per_location for s in strides)


def build_pair(kind):
    """(config, torchvision model in training mode, tfrcnn model with its weights)."""
    if kind == "r18":
        base = tfrcnn.load_config(SHAPES)
        config = tfrcnn.load_config(SHAPES, take_every_candidate(base, anchor_count()))
        torch.manual_seed(0)
        twin = build_twin(twin_settings(config, SIDE))
    else:
        overrides = f"train_cfg.rpn_proposal.nms_pre=1000,train_cfg.rpn_proposal.max_per_img=250,data.img_scale=[{SIDE},{SIDE}]"
        base = tfrcnn.load_config(R50, overrides)
        config = tfrcnn.load_config(R50, overrides + "," + take_every_candidate(base, anchor_count()))
        twin = reference_detector("maskrcnn_resnet50_fpn", min_size=SIDE, max_size=SIDE)
        configure_torchvision(twin, config)
    model = tfrcnn.build_model(config, build_size=(SIDE, SIDE))
    copy_twin_weights(twin, model)
    # The reference computes in float64: torchvision's float32 gradients of the early ResNet layers are off their
    # float64 values by up to 3e-4 in cosine (PyTorch's CPU kernels), tfrcnn's float32 ones by 2e-6.
    twin.double().train()
    return config, twin, model


def torchvision_step(twin, images, targets):
    """torchvision's losses, the gradients they give, its training proposals and its transformed batch."""
    captured = {}
    hook = twin.rpn.register_forward_hook(lambda m, i, o: captured.update(proposals=[p.detach() for p in o[0]]))
    losses = twin(images, targets)
    hook.remove()
    twin.zero_grad()
    sum(losses.values()).backward()
    image_list, batch_targets = twin.transform(images, targets)
    return {k: float(v.detach()) for k, v in losses.items()}, captured["proposals"], (image_list, batch_targets)


def padded_proposals(proposals):
    """torchvision's per-image proposals [x1, y1, x2, y2] as tfrcnn's [B, N, 4] [y1, x1, y2, x2] and valid [B, N]."""
    n = max(len(p) for p in proposals)
    boxes = np.zeros([len(proposals), n, 4], np.float32)
    valid = np.zeros([len(proposals), n], bool)
    for i, p in enumerate(proposals):
        boxes[i, :len(p)] = p.numpy()[:, [1, 0, 3, 2]]
        valid[i, :len(p)] = True
    return tf.constant(boxes), tf.constant(valid)


def tfrcnn_step(model, images, targets, proposals, proposals_valid):
    """tfrcnn's five losses and their gradients, the R-CNN stage on the given proposals (the model's
    loss_terms with its own proposals swapped for them)."""
    images = tf.constant(images)
    t = {k: tf.constant(v) for k, v in targets.items()}
    seeds = tf.constant([[0, i] for i in range(images.shape[0])], tf.int64)
    with tf.GradientTape() as tape:
        features, logits, deltas = model._features(images, training=True)
        anchors = model.rpn_head.anchors(images.shape[1:3], features)
        terms = dict(model.rpn_head.loss_terms(logits, deltas, anchors, t["gt_boxes"], t["gt_classes"], None,
                                           t["image_size"], seeds))
        terms.update(model.roi_head.loss_terms(features, proposals, proposals_valid, t["gt_boxes"], t["gt_classes"],
                                           t["gt_masks"], None, seeds, gt_mask_boxes=t["gt_mask_boxes"]))
        losses = {k: s / c for k, (s, c) in terms.items()}
        total = tf.add_n(list(losses.values()))
    grads = tape.gradient(total, model.trainable_variables)
    own = model.rpn_head.get_proposals(logits, deltas, anchors, t["image_size"], model.config.train_cfg.rpn_proposal)
    return {k: float(v) for k, v in losses.items()}, grads, own


def as_tfrcnn(targets, twin_tensors):
    """{variable path: tfrcnn-layout numpy array} of torch tensors {torchvision key: tensor}, by the converter's
    own table (background slots dropped, layouts transposed)."""
    out = {}
    for key, (variable, convert) in targets.items():
        if key not in twin_tensors:
            continue
        value = twin_tensors[key].detach().numpy()
        if callable(convert):
            value = convert(value)
        elif convert is not None and value.ndim == len(convert):
            value = value.transpose(convert)
        out[variable.path] = value
    return out


def relative(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / max(np.linalg.norm(np.asarray(b, np.float64)), 1e-30))


@pytest.fixture(scope="module", params=["r18", "r50"])
def parity(request):
    kind = request.param
    config, twin, model = build_pair(kind)
    num_classes = config.model.roi_head.bbox_head.num_classes
    images, targets = torch_inputs(scenes(num_classes))
    theirs, proposals, (image_list, batch_targets) = torchvision_step(twin, images, targets)
    np_images, np_targets = tfrcnn_batch(image_list, batch_targets, MAX_INSTANCES)  # float32
    ours, grads, own_proposals = tfrcnn_step(model, np_images, np_targets, *padded_proposals(proposals))
    _, grads64, _ = tfrcnn_step(float64_copy(model, config), np_images, np_targets, *padded_proposals(proposals))
    return dict(kind=kind, config=config, twin=twin, model=model, theirs=theirs, ours=ours, grads=grads,
                grads64=grads64, proposals=proposals, own_proposals=own_proposals)


def float64_copy(model, config):
    """The model built again under Keras' float64 policy, with the same weights (the heads' outputs and losses
    stay float32, as they do under any policy)."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float64")
    try:
        copy = type(model)(config, name=model.name)
        copy(tf.zeros([1, SIDE, SIDE, 3], tf.float64))
    finally:
        keras.config.set_dtype_policy(previous)
    for source, target in zip(model.variables, copy.variables, strict=True):
        target.assign(tf.cast(source, target.dtype))
    return copy


def test_the_five_losses_match_torchvision(parity):
    theirs, ours = parity["theirs"], parity["ours"]
    assert set(ours) == set(LOSS_NAMES)
    for name, their_name in LOSS_NAMES.items():
        assert abs(ours[name] - theirs[their_name]) <= 1e-4 * abs(theirs[their_name]), \
            f"{parity['kind']} {name}: tfrcnn {ours[name]:.7g}, torchvision {theirs[their_name]:.7g}"


def test_training_proposals_match_torchvision(parity):
    """tfrcnn's own training proposals (train_cfg.rpn_proposal) are torchvision's (as in inference: >= 99% at IoU
    >= 0.999, an NMS near-tie may swap a box)."""
    boxes, _, valid = parity["own_proposals"]
    for i, theirs in enumerate(parity["proposals"]):
        theirs = theirs.numpy()[:, [1, 0, 3, 2]]
        mine = boxes[i].numpy()[valid[i].numpy()]
        assert abs(len(mine) - len(theirs)) <= 0.01 * len(theirs)
        found = box_iou(theirs, mine).max(axis=1) >= 0.999
        assert found.mean() >= 0.99, f"image {i}: {found.sum()} of {len(found)}"


def test_every_gradient_matches_torchvision(parity):
    model, twin = parity["model"], parity["twin"]
    targets = detector_targets(model)
    expected = as_tfrcnn(targets, {k: p.grad if p.grad is not None else torch.zeros_like(p)
                                   for k, p in twin.named_parameters() if p.requires_grad})
    trainable = {v.path for v in model.trainable_variables}
    assert trainable == set(expected), "the trainable variables are torchvision's trainable parameters"
    bad = []
    for variable, grad, grad64 in zip(model.trainable_variables, parity["grads"], parity["grads64"]):
        theirs = expected[variable.path].astype(np.float64).ravel()
        for precision, ours, check_norm in (("float32", grad, False), ("float64", grad64, True)):
            ours = np.asarray(ours, np.float64).ravel()
            norm_ours, norm_theirs = np.linalg.norm(ours), np.linalg.norm(theirs)
            if norm_theirs == 0 and norm_ours == 0:
                continue
            cosine = ours @ theirs / max(norm_ours * norm_theirs, 1e-30)
            if cosine < 0.9999 or (check_norm and abs(norm_ours - norm_theirs) > 1e-3 * norm_theirs):
                bad.append(f"{variable.path} ({precision}): cosine {cosine:.6f}, norms {norm_ours:.6g} / "
                           f"{norm_theirs:.6g}")
    assert not bad, f"{len(bad)} of {len(parity['grads'])} gradients differ:\n" + "\n".join(bad)


@pytest.mark.parametrize("optimizer", ["SGD", "AdamW"])
def test_optimizer_steps_match_torchvision(parity, optimizer):
    """Two steps of each optimizer on the same gradients (torchvision's, converted): tfrcnn's SGD (coupled weight
    decay on every weight, norms and biases included, PyTorch's momentum) and AdamW against torch.optim's, with the
    same clip. (Given the gradients' own 1e-3 tolerance, their differences alone would move AdamW's first steps,
    about lr * sign(g) per weight, by more than 1e-5.)"""
    config, model, twin = parity["config"], parity["model"], parity["twin"]
    opt = ("optimizer.type=SGD,optimizer.lr=0.02,optimizer.momentum=0.9,optimizer.betas=null,optimizer.eps=null,"
           "optimizer.weight_decay=0.0001") if optimizer == "SGD" else \
        ("optimizer.type=AdamW,optimizer.lr=0.001,optimizer.momentum=null,optimizer.betas=[0.9,0.999],"
         "optimizer.eps=1e-8,optimizer.weight_decay=0.05")
    # A clip below the gradients' norm, so that it acts.
    overrides = opt + ",optimizer_config.grad_clip={max_norm: 1.0},lr_config.warmup=null"
    step_config = tfrcnn.load_config(SHAPES if parity["kind"] == "r18" else R50, overrides)
    targets = detector_targets(model)
    params = dict(twin.named_parameters())
    before = {v.path: v.numpy().copy() for v in model.trainable_variables}
    saved = {v.path: v.numpy().copy() for v in model.trainable_variables}
    torch_before = {k: p.detach().clone() for k, p in params.items()}
    try:
        ours = build_optimizer(step_config, steps_per_epoch=100, model=model)
        settings = {"optimizer": {"type": optimizer, "lr": step_config.optimizer.lr,
                                  "weight_decay": step_config.optimizer.weight_decay,
                                  "momentum": step_config.optimizer.momentum,
                                  "betas": step_config.optimizer.betas, "eps": step_config.optimizer.eps}}
        theirs = build_torch_optimizer(settings, twin)
        trainable = [p for p in twin.parameters() if p.requires_grad]
        grads = [p.grad.clone() for p in trainable]
        converted = as_tfrcnn(targets, {k: p.grad for k, p in params.items() if p.requires_grad})
        same = [tf.constant(converted[v.path], tf.float32) for v in model.trainable_variables]
        for _ in range(2):
            ours.apply_gradients(zip(same, model.trainable_variables))
            for p, g in zip(trainable, grads):
                p.grad = g.clone()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            theirs.step()
        after = as_tfrcnn(targets, params)
        base = as_tfrcnn(targets, torch_before)
        for variable in model.trainable_variables:
            path, value = variable.path, variable.numpy()
            assert relative(value, after[path]) <= 1e-5, f"{optimizer} {path}: weights differ"
            # float32 weights round each step: an update below ~1e-4 of its weights is that rounding's size.
            update = after[path] - base[path]
            floor = 4 * np.finfo(np.float32).eps * np.linalg.norm(after[path]) / max(np.linalg.norm(update), 1e-30)
            assert relative(value - before[path], update) <= 1e-3 + floor, f"{optimizer} {path}: updates"
    finally:  # the other optimizer starts from the same weights
        for variable in model.trainable_variables:
            variable.assign(saved[variable.path])
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(torch_before[k])


@pytest.mark.parametrize("preset", ["torchvision", "mmdet"])
def test_initial_weights_are_drawn_as_torchvision_draws_them(preset):
    """A fresh tfrcnn model with the torchvision preset draws every weight from torchvision's distribution (each
    tensor's mean and standard deviation those of the twin's fresh weights, within six standard errors); with
    MMDetection's initializers (the main job's config), the FPN's laterals and the box head's layers do not."""
    config = tfrcnn.load_config(SHAPES if preset == "torchvision" else os.path.join(ROOT, "configs",
                                                                                   "mask_rcnn_r18_fpn_shapes.yaml"))
    model = tfrcnn.build_model(config, build_size=(64, 64))
    torch.manual_seed(0)
    twin = build_twin(twin_settings(config, SIDE))
    targets = detector_targets(model)
    theirs = as_tfrcnn(targets, dict(twin.named_parameters()))
    differ = []
    for key, (variable, _) in targets.items():
        if variable.path not in theirs:  # BN statistics: constants in both, checked by the converter tests
            continue
        ours, ref = variable.numpy().astype(np.float64).ravel(), theirs[variable.path].astype(np.float64).ravel()
        sd = ref.std()
        if sd == 0 or ours.std() == 0:
            same = np.array_equal(ours, ref)
        else:
            n = ref.size
            same = abs(ours.std() / sd - 1) <= 6 / np.sqrt(2 * n) and abs(ours.mean() - ref.mean()) <= 6 * sd / np.sqrt(n)
        if not same:
            differ.append(key)
    if preset == "torchvision":
        assert not differ, differ
    else:
        expected = {"backbone.fpn.inner_blocks.1.0.weight", "backbone.fpn.inner_blocks.2.0.weight",
                    "backbone.fpn.inner_blocks.3.0.weight", "roi_heads.box_head.fc6.weight",
                    "roi_heads.box_head.fc6.bias", "roi_heads.box_head.fc7.weight", "roi_heads.box_head.fc7.bias",
                    "roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.cls_score.bias",
                    "roi_heads.box_predictor.bbox_pred.weight", "roi_heads.box_predictor.bbox_pred.bias",
                    "roi_heads.mask_predictor.conv5_mask.bias", "roi_heads.mask_predictor.mask_fcn_logits.bias"}
        assert set(differ) == expected
