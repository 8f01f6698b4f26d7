"""Reference run: torchvision's Mask R-CNN built like configs/mask_rcnn_r18_fpn_shapes.yaml, trained from scratch
on a shapes dataset that tfrcnn generated, then COCO AP on its val split. Test-only: needs torch and torchvision.

    python benchmarks/torchvision_shapes.py STEPS SHAPES_DIR SIZE LR ROIS_PER_IMAGE LR_DECAY_STEP
    python benchmarks/torchvision_shapes.py 700 data/shapes 192 0.01 64 525     # BENCHMARKS.md, main job
Environment: NT = torch threads (default 2). Same as the main job: ResNet-18 with trainable BN, 64-channel FPN,
256-wide two-FC head, 4 x 64 mask convs, batch 4, SGD momentum 0.9, weight decay 1e-4, linear warmup over 50
steps from 0.001 x lr, lr x 0.1 from LR_DECAY_STEP, horizontal flips, 500/256 proposals, 20 detections.
"""
import sys, time, json, random
import numpy as np, torch, torchvision
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from pycocotools import mask as mask_util
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import TwoMLPHead, FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.models import resnet18
steps = int(sys.argv[1]); root = sys.argv[2]; size = int(sys.argv[3]); base_lr = float(sys.argv[4]); nsamp = int(sys.argv[5]); decay_at = int(sys.argv[6])
torch.set_num_threads(int(__import__("os").environ.get("NT", "2"))); torch.manual_seed(0); random.seed(0)
body = resnet18(weights=None)
backbone = BackboneWithFPN(body, {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"}, [64, 128, 256, 512], 64,
                           extra_blocks=LastLevelMaxPool())
model = MaskRCNN(backbone, num_classes=None, min_size=size, max_size=size,
                 rpn_pre_nms_top_n_train=500, rpn_post_nms_top_n_train=256, rpn_pre_nms_top_n_test=500,
                 rpn_post_nms_top_n_test=256, box_batch_size_per_image=nsamp, box_detections_per_img=20,
                 box_head=TwoMLPHead(64 * 49, 256), box_predictor=FastRCNNPredictor(256, 7),
                 mask_head=MaskRCNNHeads(64, [64, 64, 64, 64], 1), mask_predictor=MaskRCNNPredictor(64, 64, 7))
params = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.SGD(params, lr=base_lr, momentum=0.9, weight_decay=1e-4)
coco = COCO(f"{root}/annotations/instances_train.json")
ids = [i for i in coco.getImgIds() if coco.getAnnIds(imgIds=i)]
def load(i):
    info = coco.loadImgs(i)[0]
    img = torch.from_numpy(np.asarray(Image.open(f"{root}/train/{info['file_name']}").convert("RGB"))).permute(2, 0, 1).float() / 255
    anns = coco.loadAnns(coco.getAnnIds(imgIds=i, iscrowd=False))
    boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns])
    masks = torch.from_numpy(np.stack([coco.annToMask(a) for a in anns]))
    t = {"boxes": boxes, "labels": torch.tensor([a["category_id"] for a in anns]), "masks": masks}
    if random.random() < 0.5:
        img = img.flip(-1); w = img.shape[-1]
        t["boxes"] = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], 1); t["masks"] = masks.flip(-1)
    return img, t
model.train(); t0 = time.time(); order = []
for step in range(steps):
    if len(order) < 4: order += random.sample(ids, len(ids))
    batch = [load(order.pop()) for _ in range(4)]
    lr = base_lr * (min(1.0, 0.001 + (1 - 0.001) * step / 50)) * (0.1 if step >= decay_at else 1)
    for g in opt.param_groups: g["lr"] = lr
    losses = model([b[0] for b in batch], [b[1] for b in batch]); loss = sum(losses.values())
    opt.zero_grad(); loss.backward(); opt.step()
    if step % 50 == 0:
        print(f"step {step} t={time.time()-t0:.0f}s loss={loss.item():.3f} " + " ".join(f"{k}={v.item():.3f}" for k, v in losses.items()), flush=True)
train_s = time.time() - t0
print("train s", train_s, "s/step", train_s / steps, flush=True)
model.eval(); gt = COCO(f"{root}/annotations/instances_val.json"); res = []
with torch.no_grad():
    for i in gt.getImgIds():
        info = gt.loadImgs(i)[0]
        img = torch.from_numpy(np.asarray(Image.open(f"{root}/val/{info['file_name']}").convert("RGB"))).permute(2, 0, 1).float() / 255
        out = model([img])[0]
        for b, s, l, m in zip(out["boxes"], out["scores"], out["labels"], out["masks"]):
            rle = mask_util.encode(np.asfortranarray((m[0] > 0.5).numpy().astype(np.uint8))); rle["counts"] = rle["counts"].decode()
            res.append({"image_id": i, "category_id": int(l), "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
                        "score": float(s), "segmentation": rle})
dt = gt.loadRes(res); out = {}
for t in ("bbox", "segm"):
    e = COCOeval(gt, dt, t); e.evaluate(); e.accumulate(); e.summarize(); out[t] = e.stats[0]
print(json.dumps({"tv_bbox": out["bbox"], "tv_segm": out["segm"], "steps": steps, "train_s": train_s}))
