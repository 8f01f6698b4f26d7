"""Tests for tfrcnn.convert.pth: load_pth against torch.save in both serialization formats (every dtype, shared and
strided storages, a real ResNet-18), checkpoint wrappers, refusal of code in the pickle, loading in a process where
torch cannot be imported, and one clear error per kind of bad file."""
import collections
import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import textwrap
import zipfile

import ml_dtypes
import numpy as np
import pytest
import torch
import torchvision

from tfrcnn.convert import PthError, load_pth, pth

FORMATS = ["zip", "legacy"]


def _save(obj, path, fmt):
    torch.save(obj, path, _use_new_zipfile_serialization=(fmt == "zip"))
    return path


def _torch_bytes(t):
    """A tensor's elements in C order as bytes (bfloat16 through its bit pattern, which NumPy cannot hold)."""
    t = t.detach().contiguous()
    return (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy().tobytes()


def _assert_matches(loaded, sd):
    """`loaded` is `sd` as NumPy: same key order, shapes, dtypes and bit-identical values, each a C-contiguous
    array owning its data."""
    assert type(loaded) is dict
    assert list(loaded) == list(sd)
    for key, t in sd.items():
        a = loaded[key]
        assert isinstance(a, np.ndarray), key
        assert a.flags.c_contiguous and a.flags.owndata, key
        assert a.shape == tuple(t.shape), key
        if t.dtype == torch.bfloat16:
            assert a.dtype == ml_dtypes.bfloat16, key
            np.testing.assert_array_equal(a.astype(np.float32), t.float().numpy(), err_msg=key)
        else:
            assert a.dtype == t.detach().numpy().dtype, key
            np.testing.assert_array_equal(a, t.detach().numpy(), err_msg=key)
        assert a.tobytes() == _torch_bytes(t), key


def _every_dtype():
    """Every supported dtype, 0-d tensors, and views that share a storage with another entry."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 5, generator=g)
    sd = collections.OrderedDict()
    sd["f32"] = base
    sd["f64"] = base.double() / 3
    sd["f16"] = (base * 100).half()
    sd["bf16"] = (base * 100).bfloat16()
    sd["special"] = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 1e-40, 3.4e38])
    sd["i64"] = torch.tensor([-2**63, 2**63 - 1, 0, -1])
    sd["i32"] = torch.randint(-2**31, 2**31 - 1, (3, 4), dtype=torch.int32, generator=g)
    sd["i16"] = torch.randint(-2**15, 2**15 - 1, (3, 4), dtype=torch.int16, generator=g)
    sd["i8"] = torch.randint(-128, 127, (5,), dtype=torch.int8, generator=g)
    sd["u8"] = torch.randint(0, 255, (2, 3, 4), dtype=torch.uint8, generator=g)
    sd["u16"] = torch.tensor([0, 1, 65535], dtype=torch.int32).to(torch.uint16)  # written via _rebuild_tensor_v3
    sd["bool"] = base > 0
    sd["scalar_f32"] = torch.tensor(3.5)
    sd["num_batches_tracked"] = torch.tensor(7)  # BatchNorm's int64 0-d counter
    sd["scalar_bool"] = torch.tensor(True)
    sd["scalar_bf16"] = torch.tensor(-1.5, dtype=torch.bfloat16)
    sd["param"] = torch.nn.Parameter(torch.randn(3, generator=g))  # pickled through _rebuild_parameter
    sd["f32_t"] = base.t()  # non-contiguous, same storage as f32
    sd["f32_row"] = base[2]  # storage offset 10
    sd["f32_block"] = base[1:3, ::2]  # offset and stride 2
    sd["expanded"] = torch.arange(3.0).expand(4, 3)  # stride 0 over a 3-element storage
    sd["i16_t"] = sd["i16"].t()
    sd["bf16_t"] = sd["bf16"].t()
    sd["bool_col"] = sd["bool"][:, 1]
    sd["empty"] = torch.zeros(0, 3)
    return sd


# -------------------------------------------------------------------------------------------- round trips vs torch


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_dtype_matches_torch(tmp_path, fmt):
    sd = _every_dtype()
    _assert_matches(load_pth(_save(sd, tmp_path / "all.pth", fmt)), sd)


@pytest.mark.parametrize("fmt", FORMATS)
def test_resnet18_state_dict_matches_torch(tmp_path, fmt):
    torch.manual_seed(0)
    sd = torchvision.models.resnet18(weights=None).state_dict()
    loaded = load_pth(_save(sd, tmp_path / "resnet18.pth", fmt))
    _assert_matches(loaded, sd)
    assert loaded["bn1.num_batches_tracked"].shape == () and loaded["bn1.num_batches_tracked"].dtype == np.int64


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("wrapper", ["model", "state_dict"])
def test_checkpoint_wrappers_are_unwrapped(tmp_path, fmt, wrapper):
    sd = torch.nn.BatchNorm2d(3).state_dict()
    checkpoint = {"epoch": 12, wrapper: sd, "optimizer": {"state": {}, "param_groups": [{"lr": 0.02}]},
                  "meta": {"classes": ("cat", "dog")}}
    _assert_matches(load_pth(_save(checkpoint, tmp_path / "ckpt.pth", fmt)), sd)


def _rewrite_zip(src, dst, replace=None, drop=(), prefix=None):
    """Copy a torch zip checkpoint, replacing records (by name under the prefix), dropping some, or renaming the
    prefix directory."""
    replace = replace or {}
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            old_prefix, _, rest = name.partition("/")
            if rest in drop:
                continue
            zout.writestr(f"{prefix or old_prefix}/{rest}", replace.get(rest, zin.read(name)))
    return dst


def test_zip_prefix_is_arbitrary(tmp_path):
    sd = {"w": torch.randn(2, 3), "n": torch.tensor(4)}
    path = _rewrite_zip(_save(sd, tmp_path / "a.pth", "zip"), tmp_path / "b.pth", prefix="archive")
    _assert_matches(load_pth(path), sd)


def test_big_endian_zip_is_byteswapped(tmp_path):
    sd = {"f": torch.randn(2, 3), "i": torch.tensor([1, -2], dtype=torch.int16),
          "b": torch.tensor([1.5, -3.0], dtype=torch.bfloat16), "d": torch.tensor(2.5, dtype=torch.float64)}
    src = _save(sd, tmp_path / "le.pth", "zip")
    with zipfile.ZipFile(src) as z:  # storages are keyed 0, 1, ... in order of first use
        swapped = {f"data/{i}": np.frombuffer(z.read(f"le/data/{i}"), dt).byteswap().tobytes()
                   for i, dt in enumerate(["<f4", "<i2", "<u2", "<f8"])}
    path = _rewrite_zip(src, tmp_path / "be.pth", replace={**swapped, "byteorder": b"big"})
    by_torch = torch.load(path)  # torch reads the crafted file as the same tensors
    assert all(torch.equal(by_torch[k], t) for k, t in sd.items())
    _assert_matches(load_pth(path), sd)


def test_bfloat16_without_ml_dtypes_is_float32(tmp_path, monkeypatch):
    """Without ml_dtypes, bfloat16 comes back as the float32 holding the same value (exactly representable)."""
    monkeypatch.setattr(pth, "_BFLOAT16", None)
    sd = {"b": (torch.randn(3, 4) * 100).bfloat16().t(), "s": torch.tensor(-1.5, dtype=torch.bfloat16),
          "e": torch.zeros(0, dtype=torch.bfloat16)}
    loaded = load_pth(_save(sd, tmp_path / "bf16.pth", "zip"))
    for key, t in sd.items():
        a = loaded[key]
        assert a.dtype == np.float32 and a.flags.c_contiguous and a.flags.owndata and a.shape == tuple(t.shape)
        assert a.tobytes() == t.float().contiguous().numpy().tobytes()


class _StorageRef:
    """Pickled by _LegacyPickler as the persistent id it holds."""

    def __init__(self, pid):
        self.pid = pid


class _TensorCall:
    """Pickles as torch's tensor rebuild call over a persistent-id storage."""

    def __init__(self, pid, offset, size, stride):
        self.args = (_StorageRef(pid), offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, self.args


class _LegacyPickler(pickle.Pickler):
    def persistent_id(self, obj):
        return obj.pid if isinstance(obj, _StorageRef) else None


def _legacy_file(path, obj_pickle, storages):
    """A legacy-format file: magic, version, sys_info, the object pickle, the key list, then each storage."""
    with open(path, "wb") as f:
        for header in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
            pickle.dump(header, f, protocol=2)
        f.write(obj_pickle)
        pickle.dump(list(storages), f, protocol=2)
        for data in storages.values():
            f.write((data.size).to_bytes(8, "little") + data.tobytes())
    return path


def test_legacy_storage_views(tmp_path):
    """Pre-1.0 torch wrote storage views (view_metadata); a tensor's offset then counts from the view's start."""
    root = ("storage", torch.FloatStorage, "root", "cpu", 10)
    buf = io.BytesIO()
    _LegacyPickler(buf, protocol=2).dump(collections.OrderedDict(
        whole=_TensorCall((*root, None), 0, (2, 5), (5, 1)),
        view=_TensorCall((*root, ("v", 4, 3)), 1, (2,), (1,)),  # elements 4..6 of root, from the second
    ))
    path = _legacy_file(tmp_path / "views.pth", buf.getvalue(), {"root": np.arange(10, dtype="<f4")})
    expected = torch.load(path, weights_only=False)
    np.testing.assert_array_equal(expected["view"].numpy(), [5.0, 6.0])
    _assert_matches(load_pth(path), expected)


# ------------------------------------------------------------------------------------------------------- security


class _Payload:
    """Unpickling runs `fn(arg)`: os.system or eval, each of which would create the marker file."""

    def __init__(self, fn, marker):
        self.fn, self.marker = fn, str(marker)

    def __reduce__(self):
        if self.fn is os.system:
            return os.system, (f"touch '{self.marker}'",)
        return eval, (f"open({self.marker!r}, 'w').close()",)


@pytest.mark.parametrize("fmt", FORMATS)
# Protocol 2 writes builtins as Python 2's __builtin__: the message names the global as the file spells it.
@pytest.mark.parametrize("fn, global_name", [(os.system, f"{os.system.__module__}.system"), (eval, "__builtin__.eval")])
def test_code_in_the_pickle_is_refused_and_never_runs(tmp_path, fmt, fn, global_name):
    marker = tmp_path / "pwned"
    evil = pickle.dumps(collections.OrderedDict(weight=_Payload(fn, marker)), protocol=2)
    if fmt == "zip":
        real = _save({"weight": torch.ones(2)}, tmp_path / "real.pth", "zip")
        path = _rewrite_zip(real, tmp_path / "model.pth", replace={"data.pkl": evil})
    else:
        path = _legacy_file(tmp_path / "model.pth", evil, {})
    with pytest.raises(PthError, match=f"model.pth: refusing to unpickle '{global_name}'"):
        load_pth(path)
    assert not marker.exists()
    # The payload is real: an unrestricted unpickler runs it.
    pickle.loads(evil)
    assert marker.exists()


def test_whole_module_pickle_is_refused(tmp_path):
    path = _save(torch.nn.Linear(2, 2), tmp_path / "module.pth", "zip")
    with pytest.raises(PthError, match="refusing to unpickle 'torch.nn.modules.linear.Linear'"):
        load_pth(path)


def test_shared_stand_ins_cannot_be_modified(tmp_path):
    """BUILD on a global sets attributes; the stand-ins every load shares must refuse, or one file could change how
    later files load."""
    # PROTO 2; GLOBAL torch.FloatStorage; None, {'dtype': 1} as (state, slotstate); BUILD; STOP
    tamper = b"\x80\x02ctorch\nFloatStorage\nN}X\x05\x00\x00\x00dtypeK\x01s\x86b."
    real = _save({"w": torch.ones(2)}, tmp_path / "real.pth", "zip")
    with pytest.raises(PthError, match="refusing to set attribute 'dtype'"):
        load_pth(_rewrite_zip(real, tmp_path / "tamper.pth", replace={"data.pkl": tamper}))
    _assert_matches(load_pth(real), {"w": torch.ones(2)})


# ---------------------------------------------------------------------------------------------------- without torch


def test_loads_in_a_process_where_torch_cannot_be_imported(tmp_path):
    sd = _every_dtype()
    paths = [str(_save(sd, tmp_path / f"{fmt}.pth", fmt)) for fmt in FORMATS]
    child = textwrap.dedent("""
        import hashlib, json, sys

        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] in ("torch", "torchvision"):
                    raise ImportError(f"{name} is blocked in this test")

        sys.meta_path.insert(0, NoTorch())
        from tfrcnn.convert import load_pth

        out = [{k: [str(a.dtype), list(a.shape), hashlib.sha256(a.tobytes()).hexdigest()]
                for k, a in load_pth(p).items()} for p in sys.argv[1:]]
        assert not any(m.partition(".")[0] in ("torch", "torchvision") for m in sys.modules)
        print(json.dumps(out))
    """)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    run = subprocess.run([sys.executable, "-c", child, *paths], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    expected = {k: [str(np.dtype(ml_dtypes.bfloat16) if t.dtype == torch.bfloat16 else t.detach().numpy().dtype),
                    list(t.shape), hashlib.sha256(_torch_bytes(t)).hexdigest()] for k, t in sd.items()}
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got == [expected, expected]


# -------------------------------------------------------------------------------------------------------- bad files


def test_text_file(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("Bad file: these are not weights\n")
    with pytest.raises(PthError, match="notes.pth: not a PyTorch checkpoint"):
        load_pth(path)


def test_empty_file_and_plain_pickle(tmp_path):
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(PthError, match="empty.pth: not a PyTorch checkpoint"):
        load_pth(tmp_path / "empty.pth")
    (tmp_path / "plain.pth").write_bytes(pickle.dumps({"w": [1.0, 2.0]}, protocol=2))
    with pytest.raises(PthError, match="plain.pth: not a PyTorch checkpoint"):
        load_pth(tmp_path / "plain.pth")


@pytest.mark.parametrize("keep, message", [
    (-8, "truncated file: storage .* needs 40 bytes, 32 remain"),  # inside the last storage's bytes
    (-44, "truncated or corrupt data for storage .*element count missing"),  # inside its element count
    (0.5, "corrupt or truncated pickle"),  # inside the object pickle
])
def test_truncated_legacy_file(tmp_path, keep, message):
    # Two 40-byte storages: which one is last depends on torch's (address-based) keys, so both are the same size.
    data = _save({"a": torch.ones(10), "b": torch.ones(10)}, tmp_path / "full.pth", "legacy").read_bytes()
    path = tmp_path / "cut.pth"
    path.write_bytes(data[:keep] if isinstance(keep, int) else data[:int(len(data) * keep)])
    with pytest.raises(PthError, match=f"cut.pth: {message}"):
        load_pth(path)


def test_zip_without_data_pkl(tmp_path):
    path = tmp_path / "other.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("other/readme.txt", "hello")
    with pytest.raises(PthError, match="other.pth: a zip archive with 0 '<dir>/data.pkl' records"):
        load_pth(path)


def test_zip_missing_or_short_storage_record(tmp_path):
    real = _save({"a": torch.ones(3), "b": torch.ones(2)}, tmp_path / "real.pth", "zip")
    with pytest.raises(PthError, match=r"missing.pth: missing storage record 'real/data/1'"):
        load_pth(_rewrite_zip(real, tmp_path / "missing.pth", drop={"data/1"}))
    with pytest.raises(PthError, match=r"short.pth: storage record 'real/data/0' holds 8 bytes, .* need 12"):
        load_pth(_rewrite_zip(real, tmp_path / "short.pth", replace={"data/0": b"\0" * 8}))


def test_truncated_zip(tmp_path):
    data = _save({"a": torch.ones(100)}, tmp_path / "full.pth", "zip").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[:len(data) // 2])
    with pytest.raises(PthError, match="cut.pth: corrupt zip archive"):
        load_pth(tmp_path / "cut.pth")


@pytest.mark.parametrize("fmt", FORMATS)
def test_values_that_are_not_tensors(tmp_path, fmt):
    with pytest.raises(PthError, match="ints.pth: state dict entry 'epoch' is of type int, not a tensor"):
        load_pth(_save({"w": torch.ones(1), "epoch": 3}, tmp_path / "ints.pth", fmt))
    with pytest.raises(PthError, match="wrapped.pth: state dict entry 'model' -> 'step' is of type str, not a tensor"):
        load_pth(_save({"model": {"w": torch.ones(1), "step": "x"}}, tmp_path / "wrapped.pth", fmt))
    with pytest.raises(PthError, match="list.pth: the checkpoint's object is of type list, not a state dict"):
        load_pth(_save([torch.ones(1)], tmp_path / "list.pth", fmt))
