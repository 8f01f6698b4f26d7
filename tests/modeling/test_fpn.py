import collections

import numpy as np
import pytest
import tensorflow as tf
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from tfrcnn.config import NeckCfg
from tfrcnn.modeling.fpn import FPN, upsample_nearest

R50 = (256, 512, 1024, 2048)
SMALL = (64, 128, 256, 512)  # ResNet-18's C2..C5
# C2..C5 sizes of a 64×96 input (exact halving) and of a 65×97 input (ceil halving: 17×25, 9×13, 5×7, 3×4).
EVEN = [(16, 24), (8, 12), (4, 6), (2, 3)]
ODD = [(17, 25), (9, 13), (5, 7), (3, 4)]


def features(sizes, channels, seed=0, batch=1):
    rng = np.random.default_rng(seed)
    return [tf.constant(rng.standard_normal((batch, h, w, c)), tf.float32) for (h, w), c in zip(sizes, channels)]


def torch_nearest(x, size):
    t = torch.from_numpy(np.asarray(x)).permute(0, 3, 1, 2)
    return F.interpolate(t, size=size, mode="nearest").permute(0, 2, 3, 1).numpy()


def test_upsample_nearest_hand_computed():
    x = tf.reshape(tf.range(6, dtype=tf.float32), [1, 3, 2, 1])  # rows [0, 1], [2, 3], [4, 5]
    # H 3 → 5: scale 3/5 = 0.6; i·0.6 = 0, 0.6, 1.2, 1.8, 2.4 → source rows 0, 0, 1, 1, 2.
    # W 2 → 4: exactly 2×: source columns 0, 0, 1, 1.
    out = upsample_nearest(x, (5, 4))[0, :, :, 0]
    np.testing.assert_array_equal(out, [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3], [4, 4, 5, 5]])


def test_upsample_nearest_odd_sizes_match_torch():
    # C5 13×19 (a 400×600 input) → the C4 lateral 25×38: H is not exactly 2× (gather), W is (repeat).
    x = np.random.default_rng(1).standard_normal((2, 13, 19, 3)).astype(np.float32)
    np.testing.assert_array_equal(upsample_nearest(tf.constant(x), (25, 38)), torch_nearest(x, (25, 38)))


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.integers(1, 90), st.integers(1, 90))
def test_upsample_nearest_property_matches_torch(h, w, out_h, out_w):
    x = np.arange(h * w, dtype=np.float32).reshape(1, h, w, 1)
    np.testing.assert_array_equal(upsample_nearest(tf.constant(x), (out_h, out_w)), torch_nearest(x, (out_h, out_w)))


def test_upsample_nearest_dynamic_shapes_match_static():
    x = tf.random.stateless_normal([1, 13, 19, 4], seed=[1, 1])
    dynamic = tf.function(lambda x, size: upsample_nearest(x, (size[0], size[1])),
                          input_signature=[tf.TensorSpec([None, None, None, 4]), tf.TensorSpec([2], tf.int32)])
    for size in [(25, 38), (26, 38), (13, 19), (40, 7)]:
        np.testing.assert_array_equal(dynamic(x, tf.constant(size)), upsample_nearest(x, size))


@pytest.mark.parametrize("add_extra_convs", [False, "on_input", "on_output"])
@pytest.mark.parametrize("sizes", [EVEN, ODD])
def test_shapes_for_each_extra_level_mode(add_extra_convs, sizes):
    neck = FPN(NeckCfg(in_channels=SMALL, out_channels=64, add_extra_convs=add_extra_convs))
    outs = neck(features(sizes, SMALL))
    # P6 is half of P5, rounded up: 2×3 → 1×2, 3×4 → 2×2 (a kernel-1 max-pool and a padded 3×3/2 conv agree).
    p6 = tuple(-(-n // 2) for n in sizes[-1])
    assert [tuple(o.shape) for o in outs] == [(1, h, w, 64) for h, w in sizes + [p6]]
    assert neck.compute_output_shape([(1, h, w, c) for (h, w), c in zip(sizes, SMALL)]) == \
        [tuple(o.shape) for o in outs]
    names = [w.path for w in neck.trainable_weights]
    extra = ["neck/fpn_convs_4/kernel", "neck/fpn_convs_4/bias"]
    assert (extra[0] in names) == bool(add_extra_convs)
    assert "neck/lateral_convs_3/kernel" in names and "neck/fpn_convs_3/bias" in names


def test_default_p6_is_strided_p5():
    outs = FPN(NeckCfg(in_channels=SMALL, out_channels=64))(features(ODD, SMALL))
    np.testing.assert_array_equal(outs[4], outs[3][:, ::2, ::2])


def test_r50_parameter_count():
    neck = FPN(NeckCfg())
    neck.build([(None, None, None, c) for c in R50])
    # Laterals: 256·(256 + 512 + 1024 + 2048) + 4·256 = 984,064. Outputs: 4·(256·256·9 + 256) = 2,360,320.
    assert neck.count_params() == 984_064 + 2_360_320 == 3_344_384
    reference = FeaturePyramidNetwork(list(R50), 256, extra_blocks=LastLevelMaxPool())
    assert neck.count_params() == sum(p.numel() for p in reference.parameters())


def copy_from_torchvision(reference, neck):
    """inner_blocks.i.0 → lateral_convs_i, layer_blocks.i.0 → fpn_convs_i, extra_blocks.p6 → fpn_convs_4."""
    layers = {l.name: l for l in neck._flatten_layers()}
    names = {"inner_blocks": "lateral_convs", "layer_blocks": "fpn_convs"}
    for key, value in reference.state_dict().items():
        parts = key.split(".")
        if parts[0] == "extra_blocks":
            if parts[1] != "p6":
                continue
            layer = layers["fpn_convs_4"]
        else:
            layer = layers[f"{names[parts[0]]}_{parts[1]}"]
        value = value.numpy()
        if parts[-1] == "weight":
            layer.kernel.assign(value.transpose(2, 3, 1, 0))
        else:
            layer.bias.assign(value)


@pytest.mark.parametrize("add_extra_convs, sizes", [(False, EVEN), (False, ODD), ("on_input", ODD),
                                                    ("on_output", ODD)])
def test_numerical_parity_with_torchvision(add_extra_convs, sizes):
    torch.manual_seed(0)
    extra = {False: LastLevelMaxPool(), "on_input": LastLevelP6P7(2048, 256),  # P6 from C5
             "on_output": LastLevelP6P7(256, 256)}[add_extra_convs]  # equal channels: P6 from P5
    reference = FeaturePyramidNetwork(list(R50), 256, extra_blocks=extra).eval()
    for name, p in reference.named_parameters():
        if name.endswith("bias"):
            torch.nn.init.normal_(p, std=0.1)  # torchvision zeroes them; random biases test their placement
    neck = FPN(NeckCfg(add_extra_convs=add_extra_convs))
    inputs = features(sizes, R50, seed=2)
    neck.build([x.shape for x in inputs])
    copy_from_torchvision(reference, neck)

    with torch.no_grad():
        expected = reference(collections.OrderedDict(
            (f"c{i}", torch.from_numpy(x.numpy()).permute(0, 3, 1, 2)) for i, x in enumerate(inputs)))
    expected = [v.permute(0, 2, 3, 1).numpy() for v in expected.values()][:5]  # LastLevelP6P7 adds P7: not ours
    outs = neck(inputs)
    assert len(outs) == 5
    for ours, ref in zip(outs, expected):
        np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_start_level_and_chained_extra_convs():
    # RetinaNet-style: C3..C5 used, P6 = conv(C5), P7 = conv(P6).
    neck = FPN(NeckCfg(in_channels=SMALL, out_channels=32, start_level=1, add_extra_convs="on_input"))
    outs = neck(features(EVEN, SMALL))
    assert [tuple(o.shape[1:]) for o in outs] == [(8, 12, 32), (4, 6, 32), (2, 3, 32), (1, 2, 32), (1, 1, 32)]
    assert [l.name for l in neck.lateral_convs] == ["lateral_convs_0", "lateral_convs_1", "lateral_convs_2"]
    assert [tuple(l.kernel.shape) for l in neck.fpn_convs[3:]] == [(3, 3, 512, 32), (3, 3, 32, 32)]


def test_invalid_configs():
    with pytest.raises(ValueError, match="num_outs"):
        FPN(NeckCfg(num_outs=3))
    with pytest.raises(ValueError, match="feature maps"):
        FPN(NeckCfg(in_channels=SMALL, out_channels=16))(features(EVEN[:3], SMALL[:3]))


def test_gradients_reach_every_weight():
    neck = FPN(NeckCfg(in_channels=SMALL, out_channels=32, num_outs=6, add_extra_convs="on_input"))
    inputs = features(ODD, SMALL, seed=3)
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        loss = sum(tf.reduce_sum(tf.square(o)) for o in neck(inputs))
    grads = tape.gradient(loss, neck.trainable_weights + inputs)
    assert len(neck.trainable_weights) == 2 * (4 + 4 + 2)
    assert all(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in grads)


@pytest.mark.parametrize("dynamic", [False, True])
def test_forward_and_backward_compile_with_xla(dynamic):
    # A 65×96 input: H halves with rounding up (17, 9, 5, 3: upsampled by the constant-index gather), W exactly
    # (24, 12, 6, 3: tf.repeat). Unknown sizes (as after `reduce_retracing`) compute the indices in the graph.
    neck = FPN(NeckCfg(in_channels=SMALL, out_channels=32))
    inputs = features([(17, 24), (9, 12), (5, 6), (3, 3)], SMALL, seed=4)
    neck.build([x.shape for x in inputs])

    def step(inputs):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            outs = neck(inputs)
            loss = sum(tf.reduce_sum(o * o) for o in outs)
        return outs, tape.gradient(loss, neck.trainable_weights + inputs)

    signature = [[tf.TensorSpec([None, None, None, c]) for c in SMALL]] if dynamic else None
    eager = step(inputs)
    compiled = tf.function(step, jit_compile=True, input_signature=signature)(inputs)
    for a, b in zip(tf.nest.flatten(eager), tf.nest.flatten(compiled)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * float(tf.reduce_max(tf.abs(a))))


def test_get_config_round_trip():
    neck = FPN(NeckCfg(in_channels=SMALL, out_channels=16, add_extra_convs="on_output"))
    clone = FPN.from_config(neck.get_config())
    assert clone.cfg == neck.cfg and clone.name == "neck"
    assert [l.name for l in clone.fpn_convs] == [f"fpn_convs_{i}" for i in range(5)]
