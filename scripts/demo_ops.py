"""The foundation demonstration: every detection op of a two-stage detector, on one synthetic image.

It reads a config (default: MMDetection's Mask R-CNN R50-FPN 1x), draws three shapes with instance masks,
and runs the ops in the order a Mask R-CNN uses them: anchors → RPN assignment and sampling → proposals →
R-CNN assignment and sampling → multilevel RoIAlign → mask targets → class-aware NMS → mask pasting.
There is no network yet: the RPN and R-CNN "predictions" are the gt-derived ideal ones plus noise, which is
enough to show what each op does with the config's values. The picture goes to `--output_dir/demo.png`.

    python scripts/demo_ops.py --output_dir demo_out
"""
import os

from absl import flags

import _cli

_cli.define_config_flags([_cli.R50_CONFIG], "Default: configs/mask_rcnn_r50_fpn_1x_coco.yaml.")
flags.DEFINE_integer("image_size", 320, "Side in pixels of the square synthetic image, a positive multiple of 64.")
flags.DEFINE_string("output_dir", "demo_out", "Folder for demo.png and config.yaml (created if needed).")
flags.DEFINE_integer("seed", 0, "Random seed of the scene and the noise.")
flags.register_validator("image_size", lambda size: size > 0 and size % 64 == 0,
                         "must be a positive multiple of 64")
FLAGS = flags.FLAGS


def synthetic_scene(size, rng):
    """An RGB image [size, size, 3] uint8 with a rectangle, an ellipse and a triangle; their boxes
    [3, 4] ([y1, x1, y2, x2] pixels), classes [3] (1..3) and full-image masks [3, size, size]."""
    import numpy as np
    from PIL import Image, ImageDraw

    image = Image.fromarray(rng.integers(90, 140, (size, size, 3), dtype=np.uint8))
    boxes, masks = [], []
    for kind, (y, x, h, w) in enumerate([(0.1, 0.1, 0.35, 0.5), (0.45, 0.15, 0.4, 0.3), (0.3, 0.55, 0.5, 0.35)]):
        y1, x1, y2, x2 = [int(v * size) for v in (y, x, y + h, x + w)]
        mask = Image.new("L", (size, size))
        shape = [(x1, y1), (x2 - 1, y2 - 1)]
        draw = ImageDraw.Draw(mask)
        if kind == 0:
            draw.rectangle(shape, fill=1)
        elif kind == 1:
            draw.ellipse(shape, fill=1)
        else:
            draw.polygon([(x1, y2 - 1), ((x1 + x2) // 2, y1), (x2 - 1, y2 - 1)], fill=1)
        mask = np.asarray(mask, np.float32)
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        image.paste(Image.new("RGB", (size, size), color), mask=Image.fromarray((mask * 255).astype(np.uint8)))
        ys, xs = np.nonzero(mask)
        boxes.append([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1])
        masks.append(mask)
    return np.asarray(image), np.asarray(boxes, np.float32), np.arange(1, 4, dtype=np.int32), np.stack(masks)


def line(stage, text):
    print(f"  {stage:<28} {text}")


def main(_):
    _cli.check_config_files(FLAGS.config_file)  # before TensorFlow loads
    import numpy as np
    import tensorflow as tf
    from PIL import Image, ImageDraw

    import tfrcnn
    from tfrcnn.config import CONFIG_NAME, save_config
    from tfrcnn.inference import Postprocessor
    from tfrcnn.modeling.rpn import RPNHead
    from tfrcnn.ops import anchors as anchors_lib
    from tfrcnn.ops.assign import MaxIoUAssigner
    from tfrcnn.ops.boxes import pairwise_iou
    from tfrcnn.ops.masks import mask_targets
    from tfrcnn.ops.nms import multiclass_nms
    from tfrcnn.ops.roi_align import multilevel_roi_align
    from tfrcnn.ops.sample import RandomSampler

    cfg = tfrcnn.load_config(FLAGS.config_file, FLAGS.params_override)
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    save_config(cfg, os.path.join(FLAGS.output_dir, CONFIG_NAME))
    rng = np.random.default_rng(FLAGS.seed)
    size = FLAGS.image_size
    image, gt_np, gt_classes, gt_masks_full = synthetic_scene(size, rng)
    gt_boxes, gt_valid = tf.constant(gt_np[None]), tf.ones([1, len(gt_np)], tf.bool)
    rpn, rcnn = cfg.model.rpn_head, cfg.model.roi_head
    configs = ", ".join(map(os.path.relpath, FLAGS.config_file))
    print(f"{configs}: {cfg.model.type}, image {size}x{size}, {len(gt_np)} gt objects")

    # Anchors and RPN targets.
    generator = anchors_lib.anchor_generator_from_config(rpn.anchor_generator)
    level_anchors = generator((size, size))
    anchors = tf.concat(level_anchors, 0)
    line("AnchorGenerator", f"{anchors.shape[0]} anchors over {len(level_anchors)} levels "
         f"({', '.join(str(a.shape[0]) for a in level_anchors)})")
    assigner = MaxIoUAssigner(cfg.train_cfg.rpn.assigner)
    gt_inds, _, matched = assigner.assign(anchors, gt_boxes, gt_valid)
    sampler = RandomSampler(cfg.train_cfg.rpn.sampler)
    sample = sampler.sample(assigner, anchors, gt_boxes, gt_valid, (FLAGS.seed, 1))
    counts = [int(tf.reduce_sum(tf.cast(gt_inds == v, tf.int32))) for v in (-1, 0)]
    line("MaxIoUAssigner (rpn)", f"{int(tf.reduce_sum(tf.cast(gt_inds > 0, tf.int32)))} positive, "
         f"{counts[1]} negative, {counts[0]} ignored")
    line("RandomSampler (rpn)", f"{int(tf.reduce_sum(tf.cast(sample.positive, tf.int32)))} positive + "
         f"{int(tf.reduce_sum(tf.cast(sample.valid & ~sample.positive, tf.int32)))} negative of "
         f"{sampler.cfg.num} slots")

    # Proposals from ideal RPN outputs plus noise, through the RPN head's own proposal step (no weights needed):
    # per level top nms_pre, decode, clip, min size, NMS per level, top k.
    prop = cfg.test_cfg.rpn
    ious = tf.reduce_max(pairwise_iou(anchors[None], gt_boxes), -1)
    probs = tf.clip_by_value(ious + rng.normal(0, 0.05, ious.shape), 1e-4, 1 - 1e-4)
    logits = tf.cast(tf.math.log(probs / (1 - probs)), tf.float32)
    head = RPNHead(rpn, name="rpn_head")
    targets = head.bbox_coder.encode(tf.gather(gt_np, matched[0]), anchors)
    deltas = (targets + rng.normal(0, 0.1, targets.shape).astype(np.float32))[None]
    splits = [a.shape[0] for a in level_anchors]
    proposals, _, proposals_valid = head.get_proposals(tf.split(logits, splits, 1), tf.split(deltas, splits, 1),
                                                       level_anchors, tf.constant([[size, size]]), prop)
    line("proposals (test_cfg.rpn)", f"{int(tf.reduce_sum(tf.cast(proposals_valid, tf.int32)))} kept "
         f"of {sum(min(prop.nms_pre, n) for n in splits)} after NMS {prop.nms_thr} per level")

    # R-CNN targets: gt added as proposals, assigned, sampled; RoIAlign on a toy pyramid (pooled image).
    sampler = RandomSampler(cfg.train_cfg.rcnn.sampler)
    sample = sampler.sample(MaxIoUAssigner(cfg.train_cfg.rcnn.assigner), proposals, gt_boxes, gt_valid,
                            (FLAGS.seed, 2), proposals_valid)
    sampled, positive = sample.boxes, sample.positive
    line("RandomSampler (rcnn)", f"{int(tf.reduce_sum(tf.cast(positive, tf.int32)))} positive + "
         f"{int(tf.reduce_sum(tf.cast(sample.valid & ~positive, tf.int32)))} negative of {sampler.cfg.num} slots")
    extractor = rcnn.bbox_roi_extractor
    pixels = tf.constant(image[None], tf.float32) / 255.0
    pyramid = [tf.nn.avg_pool2d(pixels, k, k, "VALID") for k in extractor.featmap_strides]
    layer = extractor.roi_layer
    features = multilevel_roi_align(pyramid, sampled, layer.output_size, layer.sampling_ratio, layer.aligned,
                                    extractor.featmap_strides, extractor.finest_scale)
    line(f"{layer.type} ({extractor.type})", f"RoI features {features.shape.as_list()}")

    if rcnn.mask_head is not None:
        # The data pipeline crops each gt mask to its box (112×112); mask_targets reads those crops.
        crop = cfg.data.mask_crop_size
        full_frames = tf.constant([[[0, 0, size, size]] * len(gt_np)], tf.float32)
        cropped = mask_targets(gt_masks_full[None], full_frames, gt_boxes, tf.range(len(gt_np))[None], crop, binarize=False)
        pos_index = tf.boolean_mask(sample.matched, positive)[None]
        targets = mask_targets(cropped, gt_boxes, tf.boolean_mask(sampled, positive)[None], pos_index,
                               cfg.train_cfg.rcnn.mask_size)
        line("mask targets", f"{targets.shape.as_list()}, mean foreground {float(tf.reduce_mean(targets)):.2f}")

    # Detections: ideal class scores (IoU with each class's gt) plus noise, class-aware NMS, pasted masks.
    test = cfg.test_cfg.rcnn
    class_iou = pairwise_iou(proposals, gt_boxes)[0]  # [K, 3], class c + 1 is gt c
    class_scores = tf.clip_by_value(class_iou ** 6 + rng.normal(0, 0.01, class_iou.shape), 0, 1)
    class_scores *= tf.cast(proposals_valid[0], tf.float32)[:, None]
    dets = multiclass_nms(proposals[:, :, None], tf.cast(class_scores, tf.float32)[None], test.score_thr,
                          test.nms.iou_threshold, test.max_per_img)
    num = int(dets["num_detections"][0])
    line("multiclass NMS (test_cfg)", f"{num} detections above score {test.score_thr}")
    det_boxes, det_classes = dets["detection_boxes"][:, :num], dets["detection_classes"][0, :num]
    # Stand-in for the mask head: each detection's class's gt mask, resampled into its box at 28×28.
    full_frames = tf.constant([[[0, 0, size, size]] * len(gt_np)], tf.float32)
    ideal = mask_targets(gt_masks_full[None], full_frames, det_boxes, det_classes[None] - 1, 28, binarize=False)
    shapes = ([1, 2, 3], ["rectangle", "ellipse", "triangle"])  # the scene's classes, not the config's
    pasted = Postprocessor.from_config(cfg, shapes).paste(ideal, det_boxes, (size, size))[0].numpy()
    line("paste_masks", f"{pasted.shape[0]} masks of {size}x{size}, {int(pasted.sum())} foreground pixels")

    canvas = image.astype(np.float32)
    palette = np.array([[255, 60, 60], [60, 200, 60], [60, 120, 255]], np.float32)
    for k in range(num):
        m = pasted[k].astype(bool)
        canvas[m] = 0.5 * canvas[m] + 0.5 * palette[(int(det_classes[k]) - 1) % 3]
    picture = Image.fromarray(canvas.astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    for k in range(num):
        y1, x1, y2, x2 = det_boxes[0, k].numpy()
        draw.rectangle([x1, y1, x2, y2], outline=tuple(int(c) for c in palette[(int(det_classes[k]) - 1) % 3]))
        draw.text((x1 + 2, y1 + 1), f"{int(det_classes[k])}: {float(dets['detection_scores'][0, k]):.2f}")
    path = os.path.join(FLAGS.output_dir, "demo.png")
    picture.save(path)
    print(f"wrote {path} and {os.path.join(FLAGS.output_dir, CONFIG_NAME)}")


if __name__ == "__main__":
    _cli.run(main)
