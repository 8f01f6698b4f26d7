r"""Converts torchvision ImageNet ResNet weights (a .pth state dict) into a tfrcnn backbone checkpoint, without
importing torch.

    python scripts/convert_checkpoint.py --checkpoint resnet50-0676ba61.pth --arch resnet50 \
        --output_dir weights/resnet50
    python scripts/train.py --config_file configs/mask_rcnn_r50_fpn_1x_coco.yaml --model_dir runs/r50 \
        --init_checkpoint weights/resnet50/backbone

The output is `<output_dir>/backbone.index` and `backbone.data-*`: the backbone's variables keyed by their paths
in a tfrcnn detector, which `train.py --init_checkpoint` copies into the model's backbone. Every key of the
state dict must fit (the ImageNet classifier `fc.*` is skipped): missing, unexpected or misshapen keys are
listed in one error. Detection checkpoints (maskrcnn_resnet50_fpn, fasterrcnn_resnet50_fpn) are not supported
yet.
"""
import os

from absl import flags

import _cli

ARCHS = ["resnet18", "resnet34", "resnet50", "resnet101"]
flags.DEFINE_string("checkpoint", None, "Required. A torchvision state dict saved with torch.save (zip or legacy "
                    "format), e.g. resnet50-0676ba61.pth.")
flags.DEFINE_enum("arch", None, ARCHS, "Required. The architecture the state dict holds.")
flags.DEFINE_string("output_dir", None, "Required. Folder to write the checkpoint `backbone` into; created if "
                    "needed.")
flags.mark_flags_as_required(["checkpoint", "arch", "output_dir"])
FLAGS = flags.FLAGS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE_CONFIG = os.path.join(REPO, "configs", "mask_rcnn_r50_fpn_1x_coco.yaml")


def main(_):
    _cli.check_file(FLAGS.checkpoint, "checkpoint")  # before TensorFlow loads
    depth = int(FLAGS.arch[len("resnet"):])
    from tfrcnn.convert import load_pth
    from tfrcnn.convert.torchvision import load_resnet, save_backbone_checkpoint

    state_dict = load_pth(FLAGS.checkpoint)
    import tfrcnn
    overrides = f"model.backbone.depth={depth}"
    if depth < 50:  # BasicBlock stages: C2..C5 have 64..512 channels
        overrides += ",model.neck.in_channels=[64,128,256,512]"
    model = tfrcnn.build_model(tfrcnn.load_config(BASE_CONFIG, overrides), build_size=(64, 64))
    written = load_resnet(model.backbone, state_dict, source=FLAGS.checkpoint)
    path = save_backbone_checkpoint(model, os.path.join(FLAGS.output_dir, "backbone"))
    print(f"Converted {written} tensors of {FLAGS.checkpoint} ({FLAGS.arch}) to {path}")
    print(f"Train from it with: python scripts/train.py --config_file CONFIG --model_dir DIR --init_checkpoint {path}")
    return 0


if __name__ == "__main__":
    _cli.run(main)
