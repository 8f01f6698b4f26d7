"""Would Winograd convolution pay in TensorFlow on this CPU? 3x3 stride-1 convs of R50-FPN Mask R-CNN at 1024²,
TensorFlow's conv kernel against Winograd F(2x2,3x3) and F(4x4,3x3) written in TF ops (input transform, one
batched matmul, output transform), each XLA-compiled; forward, and forward + both gradients. F(2,3) does 2.25x
fewer multiplications in its matmul, F(4,3) 4x; the transforms are extra memory passes.

    python benchmarks/winograd.py
"""
import statistics
import time

import numpy as np
import tensorflow as tf

# Lavin & Gray's matrices: output tile m, input tile m + 2, y = A^T [(G g G^T) ⊙ (B^T d B)] A.
F23 = dict(m=2, BT=[[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
           G=[[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], AT=[[1, 1, 1, 0], [0, 1, -1, -1]])
F43 = dict(m=4, BT=[[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
                    [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
           G=[[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
              [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
           AT=[[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]])


def combine(matrix, parts):
    """[sum_i matrix[r][i] · parts[i] for each row r], skipping zero coefficients."""
    out = []
    for row in matrix:
        terms = [p if c == 1 else -p if c == -1 else p * float(c) for c, p in zip(row, parts) if c != 0]
        out.append(tf.add_n(terms))
    return out


def winograd(spec):
    m, bt, g_mat, at = spec["m"], spec["BT"], np.array(spec["G"], np.float32), spec["AT"]
    a = m + 2

    def conv(x, g):
        """SAME 3x3 conv, x [N, H, W, C], g [3, 3, C, K]."""
        n, h, w, c = x.shape
        k = g.shape[-1]
        th, tw = -(-h // m), -(-w // m)
        xp = tf.pad(x, [[0, 0], [1, 1 + m * th - h], [1, 1 + m * tw - w], [0, 0]])
        rows = [xp[:, i:i + m * (th - 1) + 1:m] for i in range(a)]
        tiles = []
        for t in combine(bt, rows):
            tiles += combine(bt, [t[:, :, j:j + m * (tw - 1) + 1:m] for j in range(a)])
        v = tf.reshape(tf.stack(tiles), [a * a, n * th * tw, c])
        u = tf.reshape(tf.einsum("ai,ijck,bj->abck", g_mat, g, g_mat), [a * a, c, k])
        prod = tf.reshape(tf.matmul(v, u), [a, a, n, th, tw, k])
        rows = combine(at, [prod[i] for i in range(a)])
        y = tf.stack([tf.stack(combine(at, [r[j] for j in range(a)]), axis=3) for r in rows], axis=2)
        return tf.reshape(y, [n, m * th, m * tw, k])[:, :h, :w]
    return conv


def direct(x, g):
    return tf.nn.conv2d(x, g, 1, "SAME")


def with_gradients(f):
    def run(x, g):
        with tf.GradientTape() as tape:
            tape.watch([x, g])
            loss = tf.reduce_sum(tf.square(f(x, g)))
        return tape.gradient(loss, [x, g])
    return run


def seconds(fn, *args):
    fn(*args)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        [t.numpy() for t in tf.nest.flatten(fn(*args))]
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    rng = np.random.default_rng(0)
    for shape in [(1, 256, 256, 256, 256), (1, 128, 128, 256, 256), (100, 14, 14, 256, 256)]:
        n, h, w, c, k = shape
        x = tf.constant(rng.standard_normal((n, h, w, c)), tf.float32)
        g = tf.constant(rng.standard_normal((3, 3, c, k)) * 0.05, tf.float32)
        reference = direct(x, g).numpy()
        line = [f"N,H,W,C,K {shape}: TF conv fwd {seconds(tf.function(direct), x, g):.3f} s, "
                f"fwd+grads {seconds(tf.function(with_gradients(direct)), x, g):.3f} s"]
        for name, spec in (("F(2,3)", F23), ("F(4,3)", F43)):
            f = winograd(spec)
            error = np.abs(tf.function(f, jit_compile=True)(x, g).numpy() - reference).max() / np.abs(reference).max()
            line.append(f"{name} fwd {seconds(tf.function(f, jit_compile=True), x, g):.3f} s, fwd+grads "
                        f"{seconds(tf.function(with_gradients(f), jit_compile=True), x, g):.3f} s, "
                        f"max error {error:.0e} of max |y|")
        print(" | ".join(line), flush=True)


if __name__ == "__main__":
    main()
