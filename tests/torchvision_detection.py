"""torchvision's Mask R-CNN / Faster R-CNN R50-FPN as numerical references (tests/convert, benchmarks).

The reference has the structure of torchvision's COCO_V1 checkpoints (FrozenBatchNorm2d with eps 0, 91 classes)
and random weights: BN statistics randomized, and the output layers of the heads rescaled on a calibration image so
that predictions look like a trained model's (`calibrate`): random weights through a random ResNet-50 give
objectness logits of ±60 (sigmoids of exactly 1.0, ties that make NMS arbitrary) and a classifier that either
saturates or gives every class about 1/91 (no detection above 0.05).
"""
import numpy as np
import torch
import torchvision
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection._utils import overwrite_eps
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops import misc as misc_nn_ops


# Standard deviation of each head output after calibration: objectness logits, RPN deltas, class logits, box
# deltas before torchvision's (10, 10, 5, 5) weights, mask logits.
OUTPUT_STDS = {"rpn.head.cls_logits": 2.0, "rpn.head.bbox_pred": 0.2, "roi_heads.box_predictor.cls_score": 4.0,
               "roi_heads.box_predictor.bbox_pred": 1.0, "roi_heads.mask_predictor.mask_fcn_logits": 4.0}


def reference_detector(arch="maskrcnn_resnet50_fpn", seed=0, min_size=800, max_size=1333, calibration_image=None,
                       depth=50, calibrated=True, num_classes=91):
    """A random torchvision detector in eval mode with COCO_V1's structure; `min_size`/`max_size` its transform's.

    calibration_image: uint8 [H, W, 3] on which the heads' outputs are scaled to OUTPUT_STDS (default: smooth
    random noise); `calibrated=False` skips that (for tests that only convert). `depth` other than 50 builds the
    same detector on another ResNet (smaller, for fast key-mapping tests)."""
    torch.manual_seed(seed)
    body = getattr(torchvision.models, f"resnet{depth}")(weights=None, norm_layer=misc_nn_ops.FrozenBatchNorm2d)
    backbone = _resnet_fpn_extractor(body, 3)
    cls = MaskRCNN if arch.startswith("maskrcnn") else FasterRCNN
    model = cls(backbone, num_classes=num_classes, min_size=min_size, max_size=max_size)
    overwrite_eps(model, 0.0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, misc_nn_ops.FrozenBatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(std=0.1)
                m.running_mean.normal_(std=0.1)
                m.running_var.uniform_(0.5, 1.5)
    model.eval()
    if not calibrated:
        return model
    if calibration_image is None:
        rng = np.random.default_rng(seed)
        calibration_image = np.kron(rng.integers(0, 256, (16, 24, 3)), np.ones((20, 20, 1))).astype(np.uint8)
    calibrate(model, calibration_image)
    return model


def calibrate(model, image):
    """Scales each layer of OUTPUT_STDS (weight and bias) so that its output on `image` has that standard deviation;
    one forward pass per layer, in pipeline order, since each changes what the later ones see."""
    modules = dict(model.named_modules())
    x = to_torch_image(image)
    for name, target in OUTPUT_STDS.items():
        if name not in modules:  # Faster R-CNN: no mask predictor
            continue
        outputs = []
        hook = modules[name].register_forward_hook(lambda m, i, o: outputs.append(o.detach().reshape(-1)))
        with torch.no_grad():
            model([x])
        hook.remove()
        if not outputs:
            raise RuntimeError(f"calibrate: {name} saw no input (no detection on the calibration image)")
        factor = target / float(torch.cat(outputs).std())
        with torch.no_grad():
            modules[name].weight.mul_(factor)
            modules[name].bias.mul_(factor)


def to_torch_image(image):
    """uint8 [H, W, 3] → float CHW in [0, 1], torchvision's detection input."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0


def run_reference(model, image):
    """Everything a parity test compares, for one uint8 [H, W, 3] image.

    Returns a dict: fpn (list of NHWC numpy maps P2..P6), padded_size (h, w) of the batched input, image_size
    (resized h, w), proposals [N, 4] [y1, x1, y2, x2] in resized pixels, and the detections in original pixels:
    boxes [K, 4] [y1, x1, y2, x2], scores [K], labels [K], masks [K, H, W] soft (Mask R-CNN).
    """
    with torch.no_grad():
        x = to_torch_image(image)
        images, _ = model.transform([x])
        features = model.backbone(images.tensors)
        proposals, _ = model.rpn(images, features)
        out = model([x])[0]
    yxyx = lambda b: b.numpy()[:, [1, 0, 3, 2]]  # noqa: E731
    result = {
        "fpn": [f.permute(0, 2, 3, 1).numpy() for f in features.values()],
        "padded_size": tuple(images.tensors.shape[-2:]),
        "image_size": tuple(images.image_sizes[0]),
        "proposals": yxyx(proposals[0]),
        "boxes": yxyx(out["boxes"]),
        "scores": out["scores"].numpy(),
        "labels": out["labels"].numpy(),
    }
    if "masks" in out:
        result["masks"] = out["masks"][:, 0].numpy()
    return result


def box_iou(a, b):
    """IoU [N, M] of numpy boxes a [N, 4] and b [M, 4], [y1, x1, y2, x2], widths without +1 (float64)."""
    a, b = np.asarray(a, np.float64)[:, None], np.asarray(b, np.float64)[None]
    inter_h = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    inter_w = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = inter_h * inter_w
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])  # noqa: E731
    return inter / np.maximum(area(a) + area(b) - inter, 1e-12)
