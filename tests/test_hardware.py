"""Tests for tfrcnn.hardware: the CPU's bfloat16 units, and the warning when bfloat16 would be emulated."""
import warnings

import pytest

from tfrcnn import hardware


def test_cpu_info_reads_the_model_and_the_features():
    info = hardware.cpu_info()
    assert info["cpu"] and set(info["cpu_features"]) <= set(hardware.FEATURES)


@pytest.mark.parametrize("features,policy,gpu,warns", [
    (["avx2", "avx512f"], "mixed_bfloat16", False, True),  # AVX-512 without bfloat16 units
    (["avx2"], "mixed_bfloat16", False, True),
    (["avx2", "avx512f", "avx512_bf16", "amx_bf16"], "mixed_bfloat16", False, False),
    (["avx2", "avx512f", "avx512_bf16"], "mixed_bfloat16", False, False),
    (["avx2"], "mixed_bfloat16", True, False),  # a GPU computes it
    (["avx2"], None, False, False),  # float32
    (["avx2"], "mixed_float16", False, False),
    (None, "mixed_bfloat16", False, False),  # unknown CPU: no claim
])
def test_warns_when_bfloat16_would_be_emulated(monkeypatch, features, policy, gpu, warns):
    monkeypatch.setattr(hardware, "cpu_info", lambda: {"cpu": "a CPU", "cpu_features": features})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hardware.warn_if_bfloat16_is_emulated(policy, gpu)
    assert len(caught) == int(warns)
    assert not warns or "without bfloat16 units" in str(caught[0].message)
