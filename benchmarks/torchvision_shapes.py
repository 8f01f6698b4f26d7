"""Reference run: torchvision's twin of a tfrcnn config (benchmarks/torchvision_twin.py) trained from scratch on a
shapes dataset that tfrcnn generated, with the config's schedule, then COCO AP on its val split. Test-only: needs
torch and torchvision.

    python benchmarks/torchvision_shapes.py --shapes_dir data/shapes      # the main job's config and schedule
    python benchmarks/torchvision_shapes.py --shapes_dir data/shapes --params_override optimizer.lr=0.02

What it takes from the config: the model (the twin), data.samples_per_gpu images per step, data.img_scale (a square
side: torchvision's min_size = max_size), data.flip_ratio, the optimizer (SGD or AdamW) with
optimizer_config.grad_clip, lr_config (linear or constant warmup from warmup_ratio over warmup_iters, lr x gamma at
each epoch of `step`) and runner.max_epochs over the training images. Images are drawn in a random order per epoch
(`--seed`); the twin's weights come from torch.manual_seed(--seed). COCO AP of the val split at the end (masks
thresholded at test_cfg.rcnn.mask_thr_binary), printed as a JSON line.
"""
import argparse
import json
import os
import random
import sys
import time

# torch and torchvision before TensorFlow, which the tfrcnn package loads: torchvision's first import after
# TensorFlow segfaults (see tests/conftest.py)
import numpy as np
import torch
import torchvision  # noqa: F401
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))
from torchvision_twin import build_optimizer, build_twin, twin_settings  # noqa: E402


def load_image(path):
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"))).permute(2, 0, 1).float() / 255


def training_sample(coco, image_id, image_dir, flip):
    """(image CHW in [0, 1], torchvision target) of one COCO image, flipped horizontally when `flip`."""
    info = coco.loadImgs(image_id)[0]
    image = load_image(os.path.join(image_dir, info["file_name"]))
    anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=False))
    boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                          for a in anns])
    masks = torch.from_numpy(np.stack([coco.annToMask(a) for a in anns]))
    target = {"boxes": boxes, "labels": torch.tensor([a["category_id"] for a in anns]), "masks": masks}
    if flip:
        w = image.shape[-1]
        image = image.flip(-1)
        target["boxes"] = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], 1)
        target["masks"] = masks.flip(-1)
    return image, target


def evaluate_twin(model, root, threshold):
    """COCO AP {"bbox", "segm"} of the twin on the val split under `root` (masks kept where > threshold); 0 when it
    detects nothing (a diverged model)."""
    from tfrcnn.inference import coco_results
    model.eval()
    gt = COCO(os.path.join(root, "annotations", "instances_val.json"))
    results = []
    with torch.no_grad():
        for i in gt.getImgIds():
            image = load_image(os.path.join(root, "val", gt.loadImgs(i)[0]["file_name"]))
            out = {k: v.numpy() for k, v in model([image])[0].items()}
            # torchvision's boxes are [x1, y1, x2, y2]; tfrcnn's records read [y1, x1, y2, x2]
            results += coco_results(i, out["boxes"][:, [1, 0, 3, 2]], out["scores"], out["labels"],
                                    out["masks"][:, 0] > threshold)
    model.train()
    ap = {"bbox": 0.0, "segm": 0.0}
    if not results:  # pycocotools' loadRes fails on an empty list
        print("no detections on the val split: AP 0", flush=True)
    for iou_type in ap if results else ():
        e = COCOeval(gt, gt.loadRes(results), iou_type)
        e.evaluate()
        e.accumulate()
        e.summarize()
        ap[iou_type] = e.stats[0]
    return ap


def lr_at(step, config, steps_per_epoch):
    """mmcv's step schedule with warmup, as tfrcnn.training.schedule computes it (0-based step)."""
    c = config.lr_config
    lr = config.optimizer.lr * c.gamma ** sum(step >= e * steps_per_epoch for e in c.step)
    if c.warmup and step < c.warmup_iters:
        lr *= c.warmup_ratio if c.warmup == "constant" else 1 - (1 - step / c.warmup_iters) * (1 - c.warmup_ratio)
    return lr


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config_file", default=os.path.join(REPO, "configs", "mask_rcnn_r18_fpn_shapes.yaml"))
    parser.add_argument("--params_override", default=None)
    parser.add_argument("--shapes_dir", default="data/shapes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    from tfrcnn.config import load_config
    config = load_config(args.config_file, args.params_override)
    side = config.data.img_scale[0] if isinstance(config.data.img_scale[0], int) else config.data.img_scale[0][0]
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    settings = twin_settings(config, side)
    model = build_twin(settings)
    optimizer = build_optimizer(settings, model)
    clip = settings["optimizer"]["grad_clip"]
    root = args.shapes_dir
    coco = COCO(os.path.join(root, "annotations", "instances_train.json"))
    ids = [i for i in coco.getImgIds() if coco.getAnnIds(imgIds=i)]
    batch = config.data.samples_per_gpu
    steps_per_epoch = len(ids) // batch
    steps = steps_per_epoch * config.runner.max_epochs
    model.train()
    began, order = time.time(), []
    for step in range(steps):
        if len(order) < batch:
            order += random.sample(ids, len(ids))
        samples = [training_sample(coco, order.pop(), os.path.join(root, "train"),
                                   random.random() < config.data.flip_ratio) for _ in range(batch)]
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config, steps_per_epoch)
        losses = model([s[0] for s in samples], [s[1] for s in samples])
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], clip)
        optimizer.step()
        if step % 50 == 0:
            print(f"step {step} t={time.time() - began:.0f}s loss={loss.item():.3f} "
                  + " ".join(f"{k}={v.item():.3f}" for k, v in losses.items()), flush=True)
    train_s = time.time() - began
    ap = evaluate_twin(model, root, config.test_cfg.rcnn.mask_thr_binary)
    print(json.dumps({"torchvision_bbox": ap["bbox"], "torchvision_segm": ap["segm"], "steps": steps,
                      "train_s": round(train_s, 1), "s_per_step": round(train_s / steps, 4),
                      "params_override": args.params_override, "seed": args.seed}))


if __name__ == "__main__":
    main()
