"""Read a PyTorch ``.pth`` state dict (what ``torch.save(model.state_dict(), path)`` writes) into NumPy arrays,
using only the standard library and NumPy: weights can be ported on a machine without torch, and reading never
runs code from the file.

torch writes one of two formats:

* zip (the default since torch 1.6): ``<prefix>/data.pkl`` is the pickled object (the prefix is the file's stem by
  default, but any name is valid). Each storage it references, by the persistent id
  ``('storage', storage_type, key, location, numel)``, is the raw record ``<prefix>/data/<key>``, in the byte order
  that ``<prefix>/byteorder`` names (little when absent).
* legacy (``_use_new_zipfile_serialization=False``; old published weights such as torchvision's 2019 COCO Mask
  R-CNN): consecutive pickles of the magic number, the protocol version (1001), a sys-info dict, the object
  (persistent ids ``('storage', storage_type, root_key, location, numel, view_metadata)``) and the list of storage
  keys; then, for each key in that list's order, an int64 element count and the storage's raw bytes, both little
  endian whatever the writer's machine.

In both, a tensor is the pickled call ``torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride,
...)``. A pickle may call any importable callable, so the object is read by an unpickler whose ``find_class`` knows
only the globals a state dict uses and maps each to a stand-in defined here; torch itself is never imported.
"""
import collections
import os
import pickle
import zipfile
import zlib

import numpy as np

try:  # a dependency of keras, so normally present; bfloat16 tensors come back as float32 without it
    import ml_dtypes

    _BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - exercised only where ml_dtypes is missing
    _BFLOAT16 = None

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


class PthError(ValueError):
    """The file is not a PyTorch state dict that `load_pth` can read, or it asks to run code a state dict never
    needs."""


class _Frozen:
    """Base of the objects `find_class` hands out. They are shared by every load, so they refuse attribute
    assignment: a pickle's BUILD opcode could otherwise change them for later loads."""

    __slots__ = ()

    def __init__(self, **fields):
        for field, value in fields.items():
            object.__setattr__(self, field, value)

    def __setattr__(self, name, value):
        raise PthError(f"refusing to set attribute {name!r} of a {type(self).__name__}")

    __delattr__ = __setattr__


class _Callable(_Frozen):
    """A stand-in callable (functions' attributes, such as __defaults__, could be set by BUILD)."""

    __slots__ = ("fn",)

    def __init__(self, fn):
        super().__init__(fn=fn)

    def __call__(self, *args):
        return self.fn(*args)


class _DType(_Frozen):
    """A torch dtype: `raw` is how torch stores an element (a little-endian NumPy dtype), `kind` what it means
    beyond that ('bool': bytes 0/1, 'bfloat16': the upper half of a float32, '' nothing)."""

    __slots__ = ("name", "raw", "kind")

    def __init__(self, name, raw, kind=""):
        super().__init__(name=name, raw=np.dtype(raw), kind=kind)

    def __repr__(self):
        return f"torch.{self.name}"

    def to_numpy(self, view):
        """A strided view of raw native-order elements → a C-contiguous array owning its data."""
        if self.kind == "bool":
            return view.astype(np.bool_, order="C")
        if self.kind == "bfloat16":
            if _BFLOAT16 is not None:  # same item size, so reinterpreting the strided view is valid
                return view.view(_BFLOAT16).astype(_BFLOAT16, order="C")
            out = np.empty(view.shape, np.float32)  # bfloat16 is the high 16 bits of a float32
            out.view(np.uint32)[...] = view.astype(np.uint32) << 16
            return out
        return view.astype(view.dtype, order="C")


_DTYPES = {d.name: d for d in (
    _DType("float32", "<f4"), _DType("float64", "<f8"), _DType("float16", "<f2"),
    _DType("bfloat16", "<u2", "bfloat16"), _DType("int64", "<i8"), _DType("int32", "<i4"), _DType("int16", "<i2"),
    _DType("int8", "i1"), _DType("uint8", "u1"), _DType("bool", "u1", "bool"),
    # Written by torch >= 2.3 as an UntypedStorage plus a dtype, through _rebuild_tensor_v3.
    _DType("uint16", "<u2"), _DType("uint32", "<u4"), _DType("uint64", "<u8"),
)}
# The pickled names of dtype objects: torch.float32 pickles as the global 'torch.float32', but other spellings
# name the same objects.
_DTYPE_NAMES = dict({name: name for name in _DTYPES}, float="float32", double="float64", half="float16",
                    long="int64", int="int32", short="int16")
# The legacy typed storage classes: their elements' dtype.
_STORAGE_DTYPES = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
    "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16", "CharStorage": "int8",
    "ByteStorage": "uint8", "BoolStorage": "bool",
}


class _StorageType(_Frozen):
    """Stand-in for a torch storage class: the dtype whose elements `numel` counts (uint8 for UntypedStorage)."""

    __slots__ = ("dtype",)

    def __init__(self, dtype):
        super().__init__(dtype=dtype)


class _Storage:
    """A storage named by a persistent id; `data` (bytes) is attached once the file's storages are read."""

    __slots__ = ("key", "dtype", "numel", "data")

    def __init__(self, key, dtype, numel):
        self.key, self.dtype, self.numel, self.data = key, dtype, numel, None

    @property
    def nbytes(self):
        return self.numel * self.dtype.raw.itemsize

    def buffer(self):
        if self.data is None:
            raise PthError(f"no data for storage {self.key!r}")
        return memoryview(self.data)


class _StorageView:
    """A legacy storage view (pre-1.0 torch): `nbytes` bytes of `root` from byte `start`."""

    __slots__ = ("key", "root", "dtype", "start", "nbytes")

    def __init__(self, key, root, start, nbytes):
        self.key, self.root, self.dtype, self.start, self.nbytes = key, root, root.dtype, start, nbytes

    def buffer(self):
        buf = self.root.buffer()
        if self.start + self.nbytes > len(buf):
            raise PthError(f"storage view {self.key!r} ends past its root storage {self.root.key!r}")
        return buf[self.start:self.start + self.nbytes]


class _Tensor:
    """What the stand-in rebuild functions return: a strided view of a storage (offset, size and stride count
    elements of `dtype`), turned into an array once the storages have been read."""

    __slots__ = ("storage", "offset", "size", "stride", "dtype")

    def __init__(self, storage, offset, size, stride, dtype):
        if not isinstance(storage, (_Storage, _StorageView)):
            raise PthError(f"a tensor is rebuilt from a {type(storage).__name__}, not a storage")
        if not isinstance(dtype, _DType):
            raise PthError(f"a tensor has dtype {dtype!r}, not a supported torch dtype")
        if not (isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride)
                and all(type(i) is int and i >= 0 for i in (offset, *size, *stride))):
            raise PthError(f"a tensor has malformed geometry: offset {offset!r}, size {size!r}, stride {stride!r}")
        self.storage, self.offset, self.size, self.stride, self.dtype = storage, offset, size, stride, dtype

    def to_numpy(self, big_endian):
        if 0 in self.size:
            return self.dtype.to_numpy(np.zeros(self.size, self.dtype.raw))
        raw = self.dtype.raw.newbyteorder(">") if big_endian else self.dtype.raw
        buf = self.storage.buffer()
        flat = np.frombuffer(buf, raw, count=len(buf) // raw.itemsize)
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if last >= flat.size:  # as_strided does not check bounds
            raise PthError(f"a {self.dtype!r} tensor of size {self.size} reaches element {last} of storage "
                           f"{self.storage.key!r}, which holds {flat.size}")
        view = np.lib.stride_tricks.as_strided(flat[self.offset:], self.size,
                                               [s * raw.itemsize for s in self.stride], writeable=False)
        if big_endian:
            view = view.astype(self.dtype.raw)  # byte-swapped, native-order copy
        return self.dtype.to_numpy(view)


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _Tensor(storage, storage_offset, size, stride, getattr(storage, "dtype", None))


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    if metadata:  # conj/neg bits: the stored values are not the tensor's values
        raise PthError(f"a tensor carries metadata {metadata!r}, which is not supported")
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None):
    if metadata:
        raise PthError(f"a tensor carries metadata {metadata!r}, which is not supported")
    return _Tensor(storage, storage_offset, size, stride, dtype)


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
    """nn.Parameter(data): the values are data's; requires_grad, hooks and Python attributes do not matter here."""
    if not isinstance(data, _Tensor):
        raise PthError(f"a parameter wraps a {type(data).__name__}, not a tensor")
    return data


# Everything a state dict's pickle may name. OrderedDict() makes a real OrderedDict: it runs no code of the file's
# choosing, and a state dict's `_metadata` attribute is set on it by BUILD.
_ALLOWED = {
    ("collections", "OrderedDict"): _Callable(collections.OrderedDict),
    ("torch._utils", "_rebuild_tensor"): _Callable(_rebuild_tensor),
    ("torch._utils", "_rebuild_tensor_v2"): _Callable(_rebuild_tensor_v2),
    ("torch._utils", "_rebuild_tensor_v3"): _Callable(_rebuild_tensor_v3),
    ("torch._utils", "_rebuild_parameter"): _Callable(_rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): _Callable(_rebuild_parameter),
    ("torch", "UntypedStorage"): _StorageType(_DTYPES["uint8"]),
    ("torch.storage", "UntypedStorage"): _StorageType(_DTYPES["uint8"]),
    **{("torch", name): _StorageType(_DTYPES[dtype]) for name, dtype in _STORAGE_DTYPES.items()},
    **{("torch", name): _DTYPES[dtype] for name, dtype in _DTYPE_NAMES.items()},
}


def _ascii(value):
    """torch's internal strings (type names, keys) as str: pickles written by Python 2 may hold them as bytes."""
    return value.decode("ascii") if isinstance(value, bytes) else value


class _Unpickler(pickle.Unpickler):
    """An unpickler that can name only `_ALLOWED` globals and resolves persistent ids with `persistent`."""

    def __init__(self, file, persistent=None):
        super().__init__(file, encoding="utf-8")
        self._persistent = persistent

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except (KeyError, TypeError):
            raise PthError(f"refusing to unpickle '{module}.{name}': a checkpoint may only rebuild tensors") from None

    def persistent_load(self, pid):
        if self._persistent is None:
            raise PthError("unexpected persistent id outside the object pickle")
        return self._persistent(pid)


class _CorruptPickle(PthError):
    """A pickle that cannot be read at all (as opposed to one naming a forbidden global)."""


def _unpickle(file, persistent=None):
    """One pickle from `file`; a malformed one raises PthError, whatever the unpickler's error was."""
    try:
        return _Unpickler(file, persistent).load()
    except PthError:
        raise
    except Exception as e:  # truncated data, bad opcodes, stand-ins called with wrong arguments, ...
        raise _CorruptPickle(f"corrupt or truncated pickle ({type(e).__name__}: {e})") from None


def _storage_id(pid, length):
    """The fields of a ('storage', storage_type, key, location, numel[, view_metadata]) persistent id."""
    if not (isinstance(pid, tuple) and len(pid) == length and _ascii(pid[0]) == "storage"):
        raise PthError(f"unexpected persistent id {pid!r:.100}")
    _, storage_type, key, _location, numel, *view = pid
    key = _ascii(key)
    if not isinstance(storage_type, _StorageType) or not isinstance(key, str):
        raise PthError(f"malformed storage reference for key {key!r}")
    if not isinstance(numel, int) or numel < 0:
        raise PthError(f"storage {key!r} has element count {numel!r}")
    return storage_type.dtype, key, numel, view


def _load_zip(archive):
    """(unpickled object, big_endian) from a zip-format checkpoint."""
    names = set(archive.namelist())
    pickles = sorted(n for n in names if n.endswith("/data.pkl") and n.count("/") == 1)
    if len(pickles) != 1:
        raise PthError(f"a zip archive with {len(pickles)} '<dir>/data.pkl' records, not a torch.save checkpoint"
                       f"{' (' + ', '.join(pickles) + ')' if pickles else ''}")
    prefix = pickles[0][:-len("data.pkl")]
    byteorder = archive.read(prefix + "byteorder").strip() if prefix + "byteorder" in names else b"little"
    if byteorder not in (b"little", b"big"):
        raise PthError(f"unknown byte order {byteorder!r}")

    storages = {}

    def persistent(pid):
        dtype, key, numel, _ = _storage_id(pid, 5)
        if key not in storages:  # later references to the key reuse it, as torch does
            storages[key] = _Storage(key, dtype, numel)
        return storages[key]

    with archive.open(pickles[0]) as f:
        obj = _unpickle(f, persistent)
    for storage in storages.values():
        name = f"{prefix}data/{storage.key}"
        if name not in names:
            raise PthError(f"missing storage record '{name}'")
        storage.data = archive.read(name)
        if len(storage.data) != storage.nbytes:
            raise PthError(f"storage record '{name}' holds {len(storage.data)} bytes, its tensors need "
                           f"{storage.nbytes}")
    return obj, byteorder == b"big"


_NOT_A_CHECKPOINT = "not a PyTorch checkpoint (neither a zip archive nor torch's legacy format)"


def _load_legacy(f):
    """The unpickled object of a legacy-format checkpoint, with its storages' bytes attached."""
    try:
        magic = _unpickle(f)
    except _CorruptPickle:
        raise PthError(_NOT_A_CHECKPOINT) from None
    if magic != _LEGACY_MAGIC:
        raise PthError(_NOT_A_CHECKPOINT)
    version = _unpickle(f)
    if version != _LEGACY_PROTOCOL:
        raise PthError(f"legacy protocol version {version!r}, expected {_LEGACY_PROTOCOL}")
    _unpickle(f)  # sys_info: the storages below are little endian whatever it says

    storages, views = {}, {}

    def persistent(pid):
        dtype, key, numel, (view,) = _storage_id(pid, 6)
        root = storages.setdefault(key, _Storage(key, dtype, numel))
        if view is None:
            return root
        if not (isinstance(view, tuple) and len(view) == 3):
            raise PthError(f"malformed view of storage {key!r}: {view!r}")
        view_key, offset, size = _ascii(view[0]), view[1], view[2]
        if not (type(offset) is int and type(size) is int and offset >= 0 and size >= 0):
            raise PthError(f"malformed view of storage {key!r}: {view!r}")
        if view_key not in views:
            item = root.dtype.raw.itemsize
            views[view_key] = _StorageView(view_key, root, offset * item, size * item)
        return views[view_key]

    obj = _unpickle(f, persistent)
    keys = _unpickle(f)
    if not isinstance(keys, list):
        raise PthError(f"the storage key list is a {type(keys).__name__}")
    for key in keys:
        storage = storages.get(key)
        if storage is None:
            raise PthError(f"storage {key!r} is listed but no tensor uses it")
        header = f.read(8)
        numel = int.from_bytes(header, "little", signed=True)
        if len(header) < 8 or numel != storage.numel:
            raise PthError(f"truncated or corrupt data for storage {key!r}: element count "
                           f"{numel if len(header) == 8 else 'missing'}, expected {storage.numel}")
        storage.data = f.read(storage.nbytes)
        if len(storage.data) != storage.nbytes:
            raise PthError(f"truncated file: storage {key!r} needs {storage.nbytes} bytes, "
                           f"{len(storage.data)} remain")
    return obj


def _state_dict(obj):
    """The state dict inside the unpickled object: the object itself, or its 'state_dict' / 'model' entry."""
    if not isinstance(obj, dict):
        raise PthError(f"the checkpoint's object is of type {type(obj).__name__}, not a state dict")
    where = ""
    if not all(isinstance(v, _Tensor) for v in obj.values()):
        for wrapper in ("state_dict", "model"):
            if isinstance(obj.get(wrapper), dict):
                obj, where = obj[wrapper], f"'{wrapper}' -> "
                break
    for key, value in obj.items():
        if not isinstance(key, str):
            raise PthError(f"state dict {where}has a key of type {type(key).__name__}: {key!r}")
        if not isinstance(value, _Tensor):
            raise PthError(f"state dict entry {where}'{key}' is of type {type(value).__name__}, not a tensor")
    return obj


def load_pth(path):
    """Read the state dict that ``torch.save`` wrote to `path` (zip or legacy format) without torch.

    Returns {name: array} in the file's key order; each array is a C-contiguous copy owning its data, with the
    tensor's shape and dtype (bfloat16 as ml_dtypes.bfloat16, or float32 without ml_dtypes; 0-d tensors as 0-d
    arrays). A checkpoint ``{"model": sd, ...}`` or ``{"state_dict": sd, ...}`` gives sd. Raises PthError, naming
    the file, for anything else: another file type, truncated data, a value that is not a tensor, or a pickle
    naming any global beyond the few that rebuild tensors (nothing of it runs).
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            if f.read(4) == b"PK\x03\x04":
                f.seek(0)
                try:
                    with zipfile.ZipFile(f) as archive:
                        obj, big_endian = _load_zip(archive)
                except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error, NotImplementedError) as e:
                    raise PthError(f"corrupt zip archive ({e})") from None
            else:
                f.seek(0)
                if f.read(1) != b"\x80":  # torch pickles with protocol >= 2, which starts with PROTO
                    raise PthError(_NOT_A_CHECKPOINT)
                f.seek(0)
                obj, big_endian = _load_legacy(f), False
        return {key: tensor.to_numpy(big_endian) for key, tensor in _state_dict(obj).items()}
    except PthError as e:
        raise PthError(f"{name}: {e}") from None
