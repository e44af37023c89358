"""A trainer's state as one flat dict of arrays plus one JSON string, and its atomic file.

A trainer's state nests dicts with int keys (the optimizer's per-parameter state), tuples
(``betas``), infinities (ReduceLROnPlateau's ``best``), None, big ints (numpy bit-generator
states) and numpy arrays. :func:`pack` turns that into ``{"arrays": {"0": a0, ...}, "tree":
json}`` where the JSON tree refers to the arrays by name, so the file format only has to store
flat named arrays and a string; :func:`unpack` inverts it exactly (Python floats round-trip
through ``repr`` bit for bit, so learning rates and scheduler values come back identical).
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np

__all__ = ["pack", "unpack", "save", "load"]

_FORMAT = "gradfuse.train.checkpoint/1"


def pack(obj) -> dict:
    """``{"arrays": {name: ndarray}, "tree": str}``; TypeError naming the path of any value
    that is not a dict, list, tuple, str, bool, int, float, None or numpy array/scalar."""
    arrays: dict[str, np.ndarray] = {}

    def enc(v, path):
        if v is None or isinstance(v, (bool, str)):
            return v
        if isinstance(v, (int, float)):
            return v
        if isinstance(v, np.ndarray):
            name = str(len(arrays))
            arrays[name] = np.asarray(v, order="C")  # (ascontiguousarray makes 0-d 1-d)
            return {"__array__": name}
        if isinstance(v, np.generic):  # numpy scalars keep their dtype as 0-d arrays
            return enc(np.asarray(v), path)
        if isinstance(v, tuple):
            return {"__tuple__": [enc(x, f"{path}[{i}]") for i, x in enumerate(v)]}
        if isinstance(v, list):
            return [enc(x, f"{path}[{i}]") for i, x in enumerate(v)]
        if isinstance(v, dict):
            if all(isinstance(k, str) and not k.startswith("__") for k in v):
                return {k: enc(x, f"{path}.{k}") for k, x in v.items()}
            # int keys (optimizer state) or reserved names: keep key types exactly
            items = []
            for k, x in v.items():
                if not isinstance(k, (str, int)) or isinstance(k, bool):
                    raise TypeError(f"checkpoint: key {k!r} at {path} is not a str or int")
                items.append([k, enc(x, f"{path}.{k}")])
            return {"__items__": items}
        if hasattr(v, "data") and isinstance(getattr(v, "data", None), np.ndarray):
            return enc(v.data, path)  # a gf.Tensor
        raise TypeError(
            f"checkpoint: cannot store {type(v).__name__} at {path} (expected dicts, lists, "
            "numbers, strings, None or arrays)")

    tree = enc(obj, "state")
    return {"format": _FORMAT, "arrays": arrays, "tree": json.dumps(tree)}


def unpack(packed: dict):
    """Invert :func:`pack` (arrays are returned as they were stored)."""
    if not isinstance(packed, dict) or "tree" not in packed or "arrays" not in packed:
        raise ValueError("checkpoint: not a gradfuse trainer checkpoint (no 'tree'/'arrays')")
    arrays = packed["arrays"]
    tree = packed["tree"]
    if isinstance(tree, np.ndarray):
        tree = str(tree)
    if not isinstance(tree, str):
        raise ValueError("checkpoint: 'tree' is not a JSON string")

    def dec(v):
        if isinstance(v, list):
            return [dec(x) for x in v]
        if isinstance(v, dict):
            if "__array__" in v:
                name = v["__array__"]
                if name not in arrays:
                    raise ValueError(f"checkpoint: array {name!r} is missing")
                return np.asarray(arrays[name])
            if "__tuple__" in v:
                return tuple(dec(x) for x in v["__tuple__"])
            if "__items__" in v:
                return {k: dec(x) for k, x in v["__items__"]}
            return {k: dec(x) for k, x in v.items()}
        return v

    try:
        return dec(json.loads(tree))
    except json.JSONDecodeError as e:
        raise ValueError(f"checkpoint: corrupt JSON tree ({e})") from None


def save(state: dict, path) -> None:
    """Write ``state`` to ``path`` atomically (a temporary file in the same directory, then
    ``os.replace``): a crash mid-write leaves the previous checkpoint intact."""
    path = os.fspath(path)
    packed = pack(state)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".ckpt", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            payload = {f"a/{k}": v for k, v in packed["arrays"].items()}
            payload["tree"] = np.array(packed["tree"])
            payload["format"] = np.array(packed["format"])
            np.savez(f, **payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load(path) -> dict:
    """Read a checkpoint written by :func:`save`; ValueError for a file that is not one."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"path: no checkpoint at {path!r}")
    try:
        with np.load(path, allow_pickle=False) as z:
            files = dict(z.items())
    except (OSError, ValueError) as e:
        raise ValueError(f"path: {path!r} is not a gradfuse checkpoint ({e})") from None
    if str(files.get("format", "")) != _FORMAT:
        raise ValueError(f"path: {path!r} is not a gradfuse trainer checkpoint")
    arrays = {k[2:]: v for k, v in files.items() if k.startswith("a/")}
    return unpack({"arrays": arrays, "tree": str(files["tree"])})
