"""DESIGN.md's layer table holds: no module of gradfuse imports a layer above its own."""

import ast
import pathlib

PKG = pathlib.Path(__file__).resolve().parent.parent / "python" / "gradfuse"

# DESIGN.md's table, bottom (0) to top. tensor and functional are one layer here: Tensor's
# operators call functional's Functions, which subclass tensor.Function (tensor imports
# functional at its end). cuda is the backend's device half (_backend dispatches to it, its
# arrays call _C through _backend); random, autograd and serialization sit on Tensor.
LAYER = {
    "_C": 0, "_version": 0, "_checks": 0,
    "_backend": 1, "cuda": 1, "memory": 1, "_config": 1, "_grad_norm": 1,
    "tensor": 2, "functional": 2, "autograd": 2, "random": 2, "serialization": 2,
    "data": 3,
    "nn": 4,
    "optim": 5,
    "distributed": 6,
    "train": 7,
    "study": 8, "examples": 8, "__main__": 8, "": 8,  # "": the package itself (gradfuse/__init__)
}

# Upward imports that stay, each inside a function: they read the MPI process group at call
# time (PyTorch's DistributedSampler and SyncBatchNorm ask torch.distributed the same way).
ALLOWED = {
    ("data/sampler.py", "distributed"),  # DistributedSampler: num_replicas/rank default to the world
    ("nn/syncbn.py", "distributed"),  # SyncBatchNorm: whether a world of several ranks exists
}


def _imports(path: pathlib.Path):
    """(top-level gradfuse subpackage or module imported) for every import in `path`."""
    rel = path.relative_to(PKG)
    pkg = list(rel.parts[:-1])  # the package the module is in, relative to gradfuse
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[:len(pkg) - (node.level - 1)]
                if node.module:
                    yield (base + node.module.split("."))[:1] or [""]
                else:  # from . import a, b: each name may be a module
                    for a in node.names:
                        yield (base + [a.name])[:1]
            elif node.module and node.module.split(".")[0] == "gradfuse":
                yield node.module.split(".")[1:2] or [""]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "gradfuse":
                    yield a.name.split(".")[1:2] or [""]


def _layer_of(rel: pathlib.Path) -> str:
    first = rel.parts[0]
    if len(rel.parts) == 1:
        first = first[:-3]  # a module of gradfuse itself
        return "" if first == "__init__" else first
    return first


def test_every_module_has_a_layer():
    names = {_layer_of(p.relative_to(PKG)) for p in PKG.rglob("*.py")}
    assert names <= set(LAYER), f"add these to LAYER (DESIGN.md's table): {names - set(LAYER)}"


def test_no_module_imports_a_layer_above_its_own():
    upward = set()
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG)
        own = _layer_of(rel)
        for (target,) in _imports(path):
            if target in LAYER and LAYER[target] > LAYER[own]:
                upward.add((rel.as_posix(), target))
    assert upward - ALLOWED == set(), "imports that reach upward (DESIGN.md's layer table)"
    assert ALLOWED - upward == set(), "ALLOWED lists an import that is gone: drop it"


def test_nn_does_not_import_optim():
    # the clip utilities share total_norm with the optimizers through gradfuse._grad_norm
    for path in (PKG / "nn").rglob("*.py"):
        assert ["optim"] not in list(_imports(path)), path.name
