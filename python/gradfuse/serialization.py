"""Checkpoints without pickle: :func:`save` and :func:`load`.

A checkpoint is ONE safetensors file (https://github.com/huggingface/safetensors), the field's
standard safe format for arrays:

* every array of the saved object is a safetensors tensor named by its dotted path in the
  object (``{"model": net}`` gives ``model.0.weight``, ``model.0.bias``, ...; a bare
  ``save(net.state_dict(), p)`` gives exactly PyTorch's names, so
  ``torch_net.load_state_dict(safetensors.torch.load_file(p))`` works);
* everything else (ints, floats incl. inf/nan, bools, strings, None, lists, tuples, dicts with
  int keys...) is JSON in the file's ``__metadata__`` under ``gradfuse.structure``, with a
  reference to the tensor in place of each array; ``gradfuse.format`` holds the format version.

Nothing in a checkpoint is executed when it is loaded: it holds values, not code. A safetensors
file written by another program (PyTorch's ``safetensors.torch.save_file``) has no
``gradfuse.format`` and loads as a flat dict of arrays.

Writing is atomic: the file is written to a temporary file in the same directory, flushed and
``fsync``'d, then renamed over the target with ``os.replace`` and the directory ``fsync``'d. A
crash or ``kill -9`` during :func:`save` leaves the previous checkpoint intact (plus, at worst,
a stray ``.<name>.*.tmp`` file beside it).

Structure JSON (format 1): JSON null/bool/int/str/list and objects whose keys are all strings
not starting with ``$`` stand for themselves; other values are tagged objects
``{"$t": tag, "v": payload}`` with tag ``array`` (payload: tensor name), ``float`` (``"nan"``,
``"inf"``, ``"-inf"``), ``tuple`` (list), ``dict``/``odict``/``counter`` (list of ``[key,
value]`` pairs, keys encoded the same way), ``np`` (``[dtype name, value]``, a numpy scalar)
or ``bytes`` (hex string).

Example::

    >>> net = gf.nn.Sequential(gf.nn.Linear(4, 8), gf.nn.ReLU(), gf.nn.Linear(8, 2))
    >>> opt = gf.optim.Adam(net.parameters(), lr=1e-3)
    >>> gf.save({"model": net, "optimizer": opt, "epoch": 3, "rng": gf.get_rng_state()},
    ...         "ckpt.safetensors")
    >>> ckpt = gf.load("ckpt.safetensors")
    >>> net.load_state_dict(ckpt["model"]); opt.load_state_dict(ckpt["optimizer"])
    >>> gf.set_rng_state(ckpt["rng"]); ckpt["epoch"]
    3
"""

from __future__ import annotations

import json
import math
import os
import secrets
from collections import Counter, OrderedDict
from collections.abc import Mapping

import numpy as np

from ._version import __version__
from .cuda.array import DeviceArray
from .random import Generator
from .tensor import Tensor

__all__ = ["save", "load", "CheckpointError"]

FORMAT_KEY = "gradfuse.format"
STRUCTURE_KEY = "gradfuse.structure"
VERSION_KEY = "gradfuse.version"
FORMAT_VERSION = "1"

# dtypes that safetensors' numpy API stores (and PyTorch reads back, complex64 aside)
_SAVABLE = {np.dtype(t) for t in (np.bool_, np.int8, np.uint8, np.int16, np.uint16, np.int32,
                                  np.uint32, np.int64, np.uint64, np.float16, np.float32,
                                  np.float64, np.complex64)}


class CheckpointError(ValueError):
    """A file that is not a readable gradfuse/safetensors checkpoint (a ValueError)."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint path does not exist (both a ValueError and a FileNotFoundError)."""


def _create_temp(directory: str, base: str) -> tuple[int, str]:
    """A new empty file ``.<base>.<random>.tmp`` in ``directory``: (fd, path).

    Created with mode 0666 so the kernel applies the umask in force now (tempfile.mkstemp's
    0600 would need the umask, which can only be read by setting it, racing other threads).
    ``base`` is shortened so the temporary name fits wherever the target name does."""
    for _ in range(100):
        tmp = os.path.join(directory, f".{base[:64]}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"path: no free temporary file name in {directory}")


# --------------------------------------------------------------------------- encoding


def _tag(tag: str, payload) -> dict:
    return {"$t": tag, "v": payload}


class _Encoder:
    """Walks the object once: JSON-able structure out, arrays collected by dotted name."""

    def __init__(self):
        self.arrays: dict[str, np.ndarray] = {}
        self._active: set[int] = set()  # containers on the current path (cycle check)

    def _name(self, path: list) -> str:
        base = ".".join(str(p) for p in path) or "tensor"
        name, i = base, 1
        # taken: e.g. {"a.b": x, "a": {"b": y}}; "__metadata__" is the header's own metadata
        # entry, and a tensor of that name makes a file safetensors cannot read back
        while name in self.arrays or name == "__metadata__":
            name = f"{base}#{i}"
            i += 1
        return name

    def _array(self, arr: np.ndarray, path: list) -> dict:
        if type(arr) is DeviceArray:  # a cuda model's state: saved from a host copy
            arr = arr.numpy()
        if arr.dtype not in _SAVABLE and arr.dtype.newbyteorder("=") not in _SAVABLE:
            raise TypeError(
                f"obj{_where(path)}: cannot save an array of dtype {arr.dtype} (safetensors "
                "stores bool, (u)int8-64, float16/32/64 and complex64)"
            )
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        name = self._name(path)
        # not np.ascontiguousarray: it turns a 0-d array (Adam's step) into shape (1,)
        self.arrays[name] = arr if arr.flags.c_contiguous else arr.copy(order="C")
        return _tag("array", name)

    def key(self, k, path):
        if isinstance(k, (np.ndarray, Tensor)) or hasattr(k, "state_dict"):
            raise TypeError(f"obj{_where(path)}: dict key {k!r} is not a plain value")
        return self.value(k, path, in_key=True)

    def value(self, x, path: list, in_key: bool = False):
        if isinstance(x, (np.str_, np.bytes_)):  # str/bytes subclasses: saved as those
            x = x.item()
        elif isinstance(x, np.generic):  # first: np.float64 is also a Python float
            if x.dtype not in _SAVABLE or x.dtype.kind == "c":
                raise TypeError(f"obj{_where(path)}: cannot save a numpy {x.dtype} scalar")
            return _tag("np", [x.dtype.name, self.value(x.item(), path)])
        if x is None or isinstance(x, (bool, str)):
            return x
        if isinstance(x, int):
            return int(x)  # an IntEnum or other int subclass is saved as its value
        if isinstance(x, float):
            if math.isfinite(x):
                return float(x)
            return _tag("float", "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf"))
        if isinstance(x, (bytes, bytearray)):
            return _tag("bytes", bytes(x).hex())
        if in_key:
            if isinstance(x, tuple):
                return _tag("tuple", [self.key(v, path) for v in x])
            raise TypeError(f"obj{_where(path)}: dict key of type {type(x).__name__} cannot "
                            "be saved")
        if isinstance(x, Tensor):
            return self._array(x.data, path)
        if isinstance(x, (np.ndarray, DeviceArray)):
            return self._array(x, path)
        if isinstance(x, Generator):
            return self._array(x.get_state().data, path)
        if hasattr(x, "detach") and hasattr(x, "numpy") and hasattr(x, "shape"):
            try:  # a PyTorch tensor
                arr = x.detach().cpu().numpy()
            except TypeError as e:  # bfloat16 and other types numpy lacks
                raise TypeError(f"obj{_where(path)}: cannot save a torch tensor of dtype "
                                f"{getattr(x, 'dtype', '?')} (numpy has no such type; "
                                "convert it, e.g. with .float())") from e
            return self._array(arr, path)
        if isinstance(x, (Mapping, list, tuple)):
            if id(x) in self._active:
                raise ValueError(f"obj{_where(path)}: the object contains itself (a cycle)")
            self._active.add(id(x))
            try:
                return self._container(x, path)
            finally:
                self._active.discard(id(x))
        state_dict = getattr(x, "state_dict", None)
        if callable(state_dict):
            # Module, Optimizer, lr scheduler, scaler, DataLoader...: saved as their state
            return self.value(state_dict(), path)
        raise TypeError(
            f"obj{_where(path)}: cannot save {type(x).__name__} (expected Tensors, numpy "
            "arrays, numbers, str, None, bytes, lists, tuples, dicts, or objects with "
            "state_dict())"
        )

    def _container(self, x, path):
        if isinstance(x, list):
            return [self.value(v, path + [i]) for i, v in enumerate(x)]
        if isinstance(x, tuple):
            return _tag("tuple", [self.value(v, path + [i]) for i, v in enumerate(x)])
        items = list(x.items())
        if isinstance(x, Counter):
            tag = "counter"
        elif isinstance(x, OrderedDict):
            tag = "odict"
        elif all(isinstance(k, str) and not k.startswith("$") for k, _ in items):
            return {k: self.value(v, path + [k]) for k, v in items}
        else:
            tag = "dict"
        return _tag(tag, [[self.key(k, path), self.value(v, path + [_key_str(k)])]
                          for k, v in items])


def _key_str(k) -> str:
    if isinstance(k, tuple):
        return "(" + ",".join(_key_str(v) for v in k) + ")"
    return str(k)


def _where(path: list) -> str:
    return "".join(f"[{p!r}]" for p in path)


# --------------------------------------------------------------------------- decoding

_NUMPY_SCALARS = {t.name: t for t in _SAVABLE}


class _Decoder:
    def __init__(self, fetch, tensors: bool):
        self.fetch = fetch  # name -> ndarray
        self.tensors = tensors
        self.used: set[str] = set()

    def value(self, x):
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        if isinstance(x, list):
            return [self.value(v) for v in x]
        if not isinstance(x, dict):
            raise ValueError(f"unexpected JSON value {x!r}")
        if "$t" not in x:
            return {k: self.value(v) for k, v in x.items()}
        if set(x) != {"$t", "v"}:
            raise ValueError(f"malformed tag {sorted(x)}")
        tag, v = x["$t"], x["v"]
        if tag == "array":
            if not isinstance(v, str):
                raise ValueError(f"array reference {v!r} is not a name")
            arr = self.fetch(v)
            self.used.add(v)
            return Tensor(arr) if self.tensors else arr
        if tag == "float":
            if v not in ("nan", "inf", "-inf"):
                raise ValueError(f"float tag with value {v!r}")
            return float(v)
        if tag == "tuple":
            return tuple(self.value(e) for e in _list(v, tag))
        if tag in ("dict", "odict", "counter"):
            cls = {"dict": dict, "odict": OrderedDict, "counter": Counter}[tag]
            out = cls()
            for pair in _list(v, tag):
                if not isinstance(pair, list) or len(pair) != 2:
                    raise ValueError(f"{tag} entry {pair!r} is not a [key, value] pair")
                out[self.value(pair[0])] = self.value(pair[1])
            return out
        if tag == "np":
            if not (isinstance(v, list) and len(v) == 2 and v[0] in _NUMPY_SCALARS):
                raise ValueError(f"numpy scalar tag {v!r}")
            return _NUMPY_SCALARS[v[0]].type(self.value(v[1]))
        if tag == "bytes":
            if not isinstance(v, str):
                raise ValueError(f"bytes tag {v!r}")
            return bytes.fromhex(v)
        raise ValueError(f"unknown tag {tag!r}")


def _list(v, tag):
    if not isinstance(v, list):
        raise ValueError(f"{tag} payload {v!r} is not a list")
    return v


def _reject_constant(name):
    raise ValueError(f"non-standard JSON constant {name}")


def _get_tensor(f, name: str, path: str, header: dict) -> np.ndarray:
    """Tensor ``name`` of the open file ``f`` as a numpy array. numpy has no bfloat16, which
    PyTorch writes a lot: those are widened to float32 (exact: a bfloat16 is the top half of
    a float32). ``header``: a dict this fills with the parsed file header, once per file."""
    try:
        return f.get_tensor(name)
    except Exception as e:
        dtype = f.get_slice(name).get_dtype()
        if dtype != "BF16":
            if dtype in ("BOOL", "U8", "I8", "U16", "I16", "U32", "I32", "U64", "I64", "F16",
                         "F32", "F64", "C64"):
                raise
            raise CheckpointError(f"{path}: tensor {name!r} has dtype {dtype}, which numpy "
                                  "(and so gradfuse) cannot hold") from e
    if not header:
        with open(path, "rb") as fh:  # safe_open has already validated header and offsets
            n = int.from_bytes(fh.read(8), "little")
            header.update(json.loads(fh.read(n)))
            header[None] = 8 + n  # where the data starts (JSON keys are never None)
    info = header.get(name, {})
    if info.get("dtype") != "BF16" or info.get("shape") != list(f.get_slice(name).get_shape()):
        raise CheckpointError(f"{path}: the file changed while it was being read")
    begin, end = info["data_offsets"]
    raw = np.fromfile(path, dtype="<u2", count=(end - begin) // 2, offset=header[None] + begin)
    return (raw.astype(np.uint32) << 16).view(np.float32).reshape(info["shape"])


# --------------------------------------------------------------------------- save / load


def _fsync_dir(directory: str) -> None:
    # the rename is durable only once the directory entry is; not possible on Windows
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save(obj, path) -> None:
    """Write ``obj`` to ``path`` as a safetensors checkpoint, atomically.

    Args:
        obj: a (nested) dict/list/tuple whose leaves are gf Tensors, numpy arrays (any shape,
            bool/int/uint/float16-64/complex64), Python or numpy scalars (inf and nan
            included), str, bytes or None; objects with ``state_dict()`` (Module, Optimizer,
            lr scheduler, scaler, DataLoader) are saved as their state_dict and a gf.Generator
            as ``get_state()`` (16 uint8). Dicts may have str, int, float, bool, None or tuple
            keys.
        path: file path (str or os.PathLike); by convention ``*.safetensors``.

    Arrays are stored under their dotted path in ``obj``; see the module docstring for the
    format. Everything is checked (raising TypeError/ValueError naming the offending entry as
    ``obj['model']['0.weight']``) before anything is written; an existing file at ``path`` is
    replaced only once the new one is complete on disk (for a symbolic link, the file it
    points to).

    Example::

        >>> gf.save({"model": net, "optimizer": opt, "epoch": 3}, "ckpt.safetensors")
        >>> gf.save(net.state_dict(), "weights.safetensors")   # PyTorch-loadable names
    """
    from safetensors.numpy import save_file

    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"path: expected a file path, got {type(path).__name__}")
    path = os.fsdecode(path)
    if not path:
        raise ValueError("path: empty file path")
    enc = _Encoder()
    structure = enc.value(obj, [])
    metadata = {
        FORMAT_KEY: FORMAT_VERSION,
        VERSION_KEY: __version__,
        STRUCTURE_KEY: json.dumps(structure, allow_nan=False, separators=(",", ":")),
    }
    if os.path.isdir(path):
        raise ValueError(f"path: {path} is a directory")
    if os.path.islink(path):
        # write where the link points (as open(path, "wb") would), not over the link itself
        path = os.path.realpath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(2, f"path: the directory {directory} does not exist", path)
    try:
        mode = os.stat(path).st_mode & 0o777  # keep an existing checkpoint's permissions
    except OSError:
        mode = None  # a new file: the mode the umask gave the temporary file
    fd, tmp = _create_temp(directory, os.path.basename(path))
    try:
        if mode is None:
            mode = os.fstat(fd).st_mode & 0o777
        os.close(fd)
        try:
            save_file(enc.arrays, tmp, metadata=metadata)
        except Exception as e:
            if type(e).__name__ != "SafetensorError":
                raise
            hint = ""
            if "too large" in str(e):
                hint = (": the non-array part of obj (JSON in the header, which safetensors "
                        "caps at 100 MB) is too large; store long lists of numbers as numpy "
                        "arrays")
            raise ValueError(f"obj: cannot be written as safetensors ({e}){hint}") from e
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # safetensors' save_file leaves the file at 0600
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)


def load(path, *, tensors: bool = False):
    """Read a checkpoint written by :func:`save` (or any safetensors file).

    Args:
        path: file path.
        tensors: return arrays as gf Tensors instead of numpy arrays.

    Returns: the saved structure, with dicts, lists, tuples and scalars as they were (objects
    saved through ``state_dict()`` come back as that state_dict, to hand to the object's
    ``load_state_dict``), and arrays as numpy arrays (native byte order, writable, not
    shared with the file). A safetensors file without gradfuse's metadata gives a dict of its
    tensors by name; its bfloat16 tensors (numpy has no such type) come back as float32, which
    holds every bfloat16 value exactly.

    Raises :class:`CheckpointError` (a ValueError) naming the path when the file is missing
    (also a FileNotFoundError), empty, truncated, not safetensors, of an unknown format
    version, or has inconsistent metadata; nothing is returned half-loaded.

    Example::

        >>> ckpt = gf.load("ckpt.safetensors")
        >>> net.load_state_dict(ckpt["model"])
        >>> opt.load_state_dict(ckpt["optimizer"])
    """
    from safetensors import safe_open

    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"path: expected a file path, got {type(path).__name__}")
    if not isinstance(tensors, bool):
        raise TypeError(f"tensors: expected a bool, got {tensors!r}")
    path = os.fsdecode(path)
    if not os.path.exists(path):
        raise CheckpointNotFoundError(2, f"{path}: no such checkpoint file")
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path}: empty file, not a checkpoint")
    try:
        with safe_open(path, framework="np") as f:
            meta = f.metadata() or {}
            names = list(f.keys())
            if FORMAT_KEY not in meta:
                header = {}
                arrays = {k: _get_tensor(f, k, path, header) for k in names}
                return {k: Tensor(a) if tensors else a for k, a in arrays.items()}
            version = meta[FORMAT_KEY]
            if version != FORMAT_VERSION:
                raise CheckpointError(
                    f"{path}: checkpoint format version {version!r}, but this gradfuse "
                    f"({__version__}) reads version {FORMAT_VERSION!r} (a newer gradfuse "
                    "wrote it?)"
                )
            if STRUCTURE_KEY not in meta:
                raise CheckpointError(f"{path}: gradfuse checkpoint without its structure "
                                      f"metadata ({STRUCTURE_KEY!r})")
            present = set(names)
            header = {}

            def fetch(name):
                if name not in present:
                    raise ValueError(f"structure refers to tensor {name!r}, which the file "
                                     "does not hold")
                return _get_tensor(f, name, path, header)

            try:
                structure = json.loads(meta[STRUCTURE_KEY], parse_constant=_reject_constant)
                dec = _Decoder(fetch, tensors)
                result = dec.value(structure)
            except CheckpointError:
                raise
            except (ValueError, TypeError, RecursionError) as e:
                raise CheckpointError(f"{path}: corrupt checkpoint structure: {e}") from e
            extra = present - dec.used
            if extra:
                raise CheckpointError(
                    f"{path}: corrupt checkpoint: tensors {sorted(extra)[:5]} are not in its "
                    "structure"
                )
            return result
    except CheckpointError:
        raise
    except Exception as e:  # SafetensorError (not an OSError/ValueError subclass), OSError
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({e})") from e
