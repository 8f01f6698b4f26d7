r"""Converts torchvision weights (a .pth state dict) into tfrcnn checkpoints, without importing torch.

Detection checkpoints (maskrcnn_resnet50_fpn, fasterrcnn_resnet50_fpn; 91 COCO classes) become a run directory
that evaluate.py, export_saved_model.py and predict.py take as --model_dir, and train.py as --init_checkpoint:

    python scripts/convert_checkpoint.py --checkpoint maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth \
        --arch maskrcnn_resnet50_fpn --output_dir weights/maskrcnn_resnet50_fpn
    python scripts/export_saved_model.py --model_dir weights/maskrcnn_resnet50_fpn --export_dir exports/tv_maskrcnn

It holds config.yaml (configs/torchvision/<arch>_coco.yaml, resolved) and the checkpoint ckpt-0.

ImageNet ResNets (resnet18/34/50/101) become `<output_dir>/backbone`, the backbone's variables keyed by their
paths in a tfrcnn detector, for a config's `model.pretrained: <output_dir>/backbone` (or `train.py
--init_checkpoint <output_dir>/backbone`, with `model.pretrained` null or present). train.py also reads the .pth
itself, on the fly, from `model.pretrained: torchvision://resnet50` or a path:

    python scripts/convert_checkpoint.py --checkpoint resnet50-0676ba61.pth --arch resnet50 \
        --output_dir weights/resnet50

Every key of the state dict must fit (current or legacy torchvision names; an ImageNet classifier `fc.*` is
skipped): missing, unexpected or misshapen keys are listed in one error, and nothing is written.
"""
import os

from absl import flags

import _cli

DETECTORS = ["maskrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn"]
RESNETS = ["resnet18", "resnet34", "resnet50", "resnet101"]
flags.DEFINE_string("checkpoint", None, "Required. A torchvision state dict saved with torch.save (zip or legacy "
                    "format), e.g. maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth or resnet50-0676ba61.pth.")
flags.DEFINE_enum("arch", None, DETECTORS + RESNETS, "Required. The architecture the state dict holds.")
flags.DEFINE_string("output_dir", None, "Required. Folder to write into (created if needed): config.yaml and "
                    "ckpt-0 for a detector, the checkpoint `backbone` for a ResNet.")
flags.mark_flags_as_required(["checkpoint", "arch", "output_dir"])
FLAGS = flags.FLAGS

BASE_CONFIG = _cli.R50_CONFIG


def preset_config(arch):
    """configs/torchvision/<arch>_coco.yaml: the tfrcnn config of torchvision's detector."""
    return os.path.join(_cli.REPO, "configs", "torchvision", f"{arch}_coco.yaml")


def convert_detector(state_dict):
    import tfrcnn
    from tfrcnn.config import save_config
    from tfrcnn.convert.torchvision import load_detector
    from tfrcnn.training.checkpoints import CONFIG_NAME, run_checkpoint
    import tensorflow as tf

    config = tfrcnn.load_config(preset_config(FLAGS.arch))
    model = tfrcnn.build_model(config, build_size=(64, 64))
    written = load_detector(model, state_dict, source=FLAGS.checkpoint)
    save_config(config, os.path.join(FLAGS.output_dir, CONFIG_NAME))
    # A CheckpointManager writes the `checkpoint` record too, so that the folder's newest checkpoint is ckpt-0.
    manager = tf.train.CheckpointManager(run_checkpoint(model), FLAGS.output_dir, max_to_keep=1)
    path = manager.save(checkpoint_number=0)
    print(f"Converted {written} tensors of {FLAGS.checkpoint} ({FLAGS.arch}) to {path}, config "
          f"{os.path.join(FLAGS.output_dir, CONFIG_NAME)}")
    print(f"Use it with: python scripts/export_saved_model.py --model_dir {FLAGS.output_dir} --export_dir EXPORT "
          f"(or evaluate.py / predict.py --model_dir {FLAGS.output_dir}, train.py --init_checkpoint {path})")


def convert_resnet(state_dict):
    import tfrcnn
    from tfrcnn.convert.torchvision import load_resnet, save_backbone_checkpoint

    depth = int(FLAGS.arch[len("resnet"):])
    overrides = f"model.backbone.depth={depth}"
    if depth < 50:  # BasicBlock stages: C2..C5 have 64..512 channels
        overrides += ",model.neck.in_channels=[64,128,256,512]"
    model = tfrcnn.build_model(tfrcnn.load_config(BASE_CONFIG, overrides), build_size=(64, 64))
    written = load_resnet(model.backbone, state_dict, source=FLAGS.checkpoint)
    path = save_backbone_checkpoint(model, os.path.join(FLAGS.output_dir, "backbone"))
    print(f"Converted {written} tensors of {FLAGS.checkpoint} ({FLAGS.arch}) to {path}")
    print(f"Train from it with: python scripts/train.py --config_file CONFIG --model_dir DIR --params_override "
          f"model.pretrained={path} (or --init_checkpoint {path}, over the config's model.pretrained)")


def main(_):
    _cli.check_file(FLAGS.checkpoint, "checkpoint")  # before TensorFlow loads
    from tfrcnn.convert import load_pth

    state_dict = load_pth(FLAGS.checkpoint)
    (convert_detector if FLAGS.arch in DETECTORS else convert_resnet)(state_dict)
    return 0


if __name__ == "__main__":
    _cli.run(main)
