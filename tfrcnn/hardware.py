"""The CPU a run is on: its model and the vector and bfloat16 units that decide its speed (Linux /proc/cpuinfo)."""
import platform
import warnings

FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")  # the flags that matter here, as /proc/cpuinfo names them


def cpu_info():
    """{"cpu": the model name, "cpu_features": which of FEATURES it has}; elsewhere than Linux the platform's
    processor string and None (unknown)."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return {"cpu": platform.processor() or platform.machine(), "cpu_features": None}
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.machine())
    present = set(next((line for line in lines if line.startswith("flags")), "").split(":", 1)[-1].split())
    return {"cpu": model, "cpu_features": [f for f in FEATURES if f in present]}


def warn_if_bfloat16_is_emulated(policy, gpu):
    """Warns when `policy` computes in bfloat16 on a CPU without bfloat16 units (no GPU, no amx_bf16 nor
    avx512_bf16): there TensorFlow emulates it, 1.6-15 times slower than float32 (docs/serving.md)."""
    features = cpu_info()["cpu_features"]
    if policy == "mixed_bfloat16" and not gpu and features is not None and not {"amx_bf16", "avx512_bf16"} & set(
            features):
        warnings.warn("runtime.mixed_precision mixed_bfloat16 on a CPU without bfloat16 units (no amx_bf16 or "
                      "avx512_bf16 in /proc/cpuinfo): TensorFlow emulates bfloat16 there, several times slower than "
                      "float32 (docs/serving.md); float32 is faster on this machine", stacklevel=3)
