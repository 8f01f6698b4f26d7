r"""Exports a trained detector as a TensorFlow SavedModel with Model Garden's serving signatures.

    python scripts/export_saved_model.py --model_dir runs/mask_rcnn --export_dir exports/mask_rcnn \
        --input_type image_tensor --input_type image_bytes --paste_masks

The first --input_type is `serving_default`; every type is also a signature of its own name. The export holds
the preprocessing (resize, normalize, pad) and the post-processing (boxes in original pixels, dataset category
ids), plus label_map.json, label_map.pbtxt and the resolved config.yaml. See tfrcnn/export.py for the outputs.
"""
from absl import flags

import _cli

_cli.define_checkpoint_flags()
flags.DEFINE_string("export_dir", None, "Required. Folder to write the SavedModel (saved_model.pb, variables/), "
                    "label_map.json, label_map.pbtxt and config.yaml into; created if needed.")
flags.DEFINE_multi_enum("input_type", ["image_tensor"], ["image_tensor", "image_bytes", "tf_example"],
                        "Serving input type: image_tensor (uint8 [B, H, W, 3]), image_bytes (string [B] of "
                        "JPEG/PNG/GIF/BMP files' bytes) or tf_example (string [B] of serialized tf.train.Examples "
                        "with image/encoded); each becomes a signature of its name, the first also serving_default")
flags.DEFINE_boolean("paste_masks", False, "Also output detection_masks_image: uint8 0/1 masks [B, K, H, W] pasted "
                     "into the original image, thresholded at test_cfg.rcnn.mask_thr_binary (Mask R-CNN only).")
flags.mark_flag_as_required("export_dir")
FLAGS = flags.FLAGS


def main(_):
    checkpoint = _cli.checkpoint_args()  # before TensorFlow loads
    from tfrcnn.export import export_saved_model
    from tfrcnn.training.checkpoints import load_model

    model, config, path = load_model(**checkpoint)
    keys = export_saved_model(model, config, FLAGS.export_dir, input_types=FLAGS.input_type,
                              paste_masks=FLAGS.paste_masks)
    print(f"Exported {path} to {FLAGS.export_dir}")
    print(f"Signatures: {', '.join(keys)}")
    print(f"Inspect it with: saved_model_cli show --dir {FLAGS.export_dir} --all")
    return 0


if __name__ == "__main__":
    _cli.run(main)
