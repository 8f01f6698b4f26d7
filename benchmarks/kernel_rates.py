"""Float32 rates of this machine's kernels: a 4096² matmul and R50-FPN's largest conv (3x3, 256->256 on the
256x256 P2 of a 1024² input), in TensorFlow and torch, median of 3 after a warm-up.

    python benchmarks/kernel_rates.py                              # TensorFlow's default (Eigen) kernels
    TF_ENABLE_ONEDNN_OPTS=1 python benchmarks/kernel_rates.py      # TensorFlow with oneDNN
"""
import statistics
import time

import torch  # before TensorFlow (see tests/conftest.py)
import tensorflow as tf


def rate(flops, fn):
    fn()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return flops / statistics.median(times) / 1e9


def main():
    n = 4096
    a, b = tf.random.normal([n, n]), tf.random.normal([n, n])
    ta, tb = torch.randn(n, n), torch.randn(n, n)
    print(f"matmul {n}^3: TensorFlow {rate(2 * n**3, lambda: tf.matmul(a, b).numpy()):.0f} GFLOP/s, "
          f"torch {rate(2 * n**3, lambda: ta @ tb):.0f} GFLOP/s ({torch.get_num_threads()} threads)")
    conv_flops = 256 * 256 * 256 * 256 * 9 * 2
    x, k = tf.random.normal([1, 256, 256, 256]), tf.random.normal([3, 3, 256, 256])
    conv = tf.function(lambda x: tf.nn.conv2d(x, k, 1, "SAME"))
    tx, tconv = torch.randn(1, 256, 256, 256), torch.nn.Conv2d(256, 256, 3, padding=1)
    with torch.no_grad():
        torch_rate = rate(conv_flops, lambda: tconv(tx))
    print(f"conv 3x3 256->256 on 256x256: TensorFlow {rate(conv_flops, lambda: conv(x).numpy()):.0f} GFLOP/s, "
          f"torch {torch_rate:.0f} GFLOP/s")


if __name__ == "__main__":
    main()
