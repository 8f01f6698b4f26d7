"""MMDetection's AnchorGenerator: dense anchors for every FPN level of a padded input image.

Anchors are [y1, x1, y2, x2] in padded-network-input pixels. Order, as in MMDetection and torchvision:
levels in stride order; within a level, feature-map locations row-major; at each location the base
anchors in ratio-major order (ratio 0.5, 1, 2 for the default config).
"""
import math

import numpy as np
import tensorflow as tf


def feature_map_size(image_size, stride):
    """Height and width of the feature map at `stride` for a padded input of `image_size` (h, w).

    A ResNet/FPN halves a map of size n to ceil(n / 2) at each stride-2 step (3×3 convs with padding 1, the
    max-pool, and P6's 1×1 stride-2 pool all do), so the size is ceil applied once per halving.
    """
    steps = int(round(math.log2(stride)))
    if 2 ** steps != stride:
        raise ValueError(f"feature_map_size: stride must be a power of two, got {stride}")
    h, w = int(image_size[0]), int(image_size[1])
    for _ in range(steps):
        h, w = -(-h // 2), -(-w // 2)
    return h, w


class AnchorGenerator:
    """MMDetection's AnchorGenerator, with torchvision's two differences as options.

    Args:
      strides: the stride of each level, e.g. (4, 8, 16, 32, 64) for P2–P6.
      ratios: height / width ratios of the base anchors, e.g. (0.5, 1.0, 2.0).
      scales: anchor sizes as multiples of the level's base size, e.g. (8,) gives 32 px on P2 (stride 4).
        Mutually exclusive with `octave_base_scale` + `scales_per_octave` (RetinaNet style:
        scales = octave_base_scale * 2 ** (i / scales_per_octave)).
      base_sizes: per-level base size; defaults to the strides.
      scale_major: MMDetection's flag: True orders base anchors ratio-outer / scale-inner.
      center_offset: anchor centres sit at (i + center_offset) * stride; 0 in MMDetection's R-CNN and torchvision.
      round_base_anchors: torchvision rounds the base anchors [-w/2, -h/2, w/2, h/2] to integers (half to even).
      strides_from_feature_size: torchvision uses stride = padded_size // feature_size per axis, which is not
        the nominal stride when the padded size is not a multiple of it (800×1216 → P6 13×19 → (61, 64)).
    """

    def __init__(self, strides, ratios, scales=None, base_sizes=None, scale_major=True, octave_base_scale=None,
                 scales_per_octave=None, center_offset=0.0, round_base_anchors=False,
                 strides_from_feature_size=False):
        if (scales is None) == (octave_base_scale is None or scales_per_octave is None):
            raise ValueError("AnchorGenerator: give either `scales` or `octave_base_scale` + `scales_per_octave`")
        if scales is None:
            scales = [octave_base_scale * 2 ** (i / scales_per_octave) for i in range(scales_per_octave)]
        base_sizes = list(strides) if base_sizes is None else list(base_sizes)
        if len(base_sizes) != len(strides):
            raise ValueError(f"AnchorGenerator: {len(base_sizes)} base_sizes for {len(strides)} strides")
        self.strides = [int(s) for s in strides]
        self.ratios = np.asarray(ratios, np.float64)
        self.scales = np.asarray(scales, np.float64)
        self.base_sizes = base_sizes
        self.scale_major = scale_major
        self.center_offset = float(center_offset)
        self.round_base_anchors = round_base_anchors
        self.strides_from_feature_size = strides_from_feature_size

    @property
    def num_base_anchors(self):
        """Anchors per feature-map location (the same on every level)."""
        return len(self.ratios) * len(self.scales)

    def base_anchors(self, level):
        """[A, 4] anchors centred on the origin for one level, [y1, x1, y2, x2], float64 numpy."""
        # torchvision computes rounded base anchors in float32; doing the same keeps its rounding ties.
        dtype = np.float32 if self.round_base_anchors else np.float64
        ratios, scales = self.ratios.astype(dtype), self.scales.astype(dtype)
        h_ratios = np.sqrt(ratios)
        w_ratios = dtype(1.0) / h_ratios
        size = dtype(self.base_sizes[level])
        if self.scale_major:
            ws = (size * w_ratios[:, None] * scales[None, :]).reshape(-1)
            hs = (size * h_ratios[:, None] * scales[None, :]).reshape(-1)
        else:
            ws = (size * scales[:, None] * w_ratios[None, :]).reshape(-1)
            hs = (size * scales[:, None] * h_ratios[None, :]).reshape(-1)
        anchors = np.stack([-hs, -ws, hs, ws], axis=-1) / dtype(2.0)
        if self.round_base_anchors:
            anchors = np.round(anchors)  # half to even, as torch.round
        return anchors.astype(np.float64)

    def level_strides(self, image_size, feature_sizes):
        """(stride_y, stride_x) of each level: nominal, or torchvision's padded_size // feature_size (ints, or int32
        scalars where the sizes are tensors)."""
        if not self.strides_from_feature_size:
            return [(s, s) for s in self.strides]
        return [(image_size[0] // fh, image_size[1] // fw) for fh, fw in feature_sizes]

    def __call__(self, image_size, feature_sizes=None):
        """Anchors of every level for one padded input size (the same for every image of a batch).

        Args:
          image_size: (height, width) of the padded network input: Python ints (anchors become graph constants),
            or int32 scalar tensors for inference on sizes unknown at trace time (anchors are computed in the graph).
          feature_sizes: optional list of (h, w) per level, ints or int32 scalars; by default
            `feature_map_size(image_size, stride)` (static sizes only).
        Returns:
          list over levels of float32 tensors [h_l * w_l * A, 4], [y1, x1, y2, x2] in padded-input pixels.
        """
        if feature_sizes is None:
            feature_sizes = [feature_map_size(image_size, s) for s in self.strides]
        if len(feature_sizes) != len(self.strides):
            raise ValueError(f"AnchorGenerator: {len(feature_sizes)} feature maps for {len(self.strides)} strides")
        dynamic = any(tf.is_tensor(x) for x in list(image_size) + [s for hw in feature_sizes for s in hw])
        anchors = []
        for level, ((fh, fw), (sy, sx)) in enumerate(zip(feature_sizes,
                                                          self.level_strides(image_size, feature_sizes))):
            if dynamic:
                anchors.append(self._level_anchors_tf(level, fh, fw, sy, sx))
                continue
            # Built with numpy once per (static) image size: anchors are constants of the graph.
            cy = (np.arange(fh) + self.center_offset) * sy
            cx = (np.arange(fw) + self.center_offset) * sx
            cy, cx = np.meshgrid(cy, cx, indexing="ij")
            shifts = np.stack([cy, cx, cy, cx], axis=-1).reshape(-1, 1, 4)
            level_anchors = (shifts + self.base_anchors(level)[None]).reshape(-1, 4)
            anchors.append(tf.constant(level_anchors, tf.float32))
        return anchors

    def _level_anchors_tf(self, level, fh, fw, sy, sx):
        """One level's anchors computed in the graph, in the order and float32 values of the numpy path."""
        def centres(n, stride):
            # float64 as the numpy path, then one rounding to float32 for the sum below
            return (tf.cast(tf.range(n), tf.float64) + self.center_offset) * tf.cast(stride, tf.float64)
        cy, cx = tf.meshgrid(centres(fh, sy), centres(fw, sx), indexing="ij")
        shifts = tf.reshape(tf.stack([cy, cx, cy, cx], axis=-1), [-1, 1, 4])
        level_anchors = shifts + tf.constant(self.base_anchors(level)[None], tf.float64)
        return tf.cast(tf.reshape(level_anchors, [-1, 4]), tf.float32)


def anchor_generator_from_config(cfg):
    """Builds an AnchorGenerator from a `model.rpn_head.anchor_generator` config (any object with its fields)."""
    return AnchorGenerator(
        strides=cfg.strides, ratios=cfg.ratios, scales=cfg.scales, base_sizes=cfg.base_sizes,
        scale_major=cfg.scale_major, octave_base_scale=cfg.octave_base_scale,
        scales_per_octave=cfg.scales_per_octave, center_offset=cfg.center_offset,
        round_base_anchors=cfg.round_base_anchors, strides_from_feature_size=cfg.strides_from_feature_size)
