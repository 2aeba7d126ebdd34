"""Imports run one way: every ``import`` in the package (function-local ones included) is checked against
the layer table below, which docs/architecture.md draws.

The check reads source with :mod:`ast`, so it also sees imports that only run on some code path.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "services" / "cuvis_cluster"
TOP = "cuvis_cluster"

# package (a sub-package, or a top-level module) -> the project packages it may import.
ALLOWED: dict[str, frozenset[str]] = {
    "errors": frozenset(),
    "wire": frozenset({"errors"}),
    "common": frozenset({"errors", "wire"}),
    "routing": frozenset({"errors", "wire", "common"}),
    "engine": frozenset({"errors"}),
    "worker": frozenset({"errors", "wire", "common", "routing", "engine"}),
    "gateway": frozenset({"errors", "wire", "common", "routing"}),
    "client": frozenset({"errors", "wire"}),
    "localcluster": frozenset({"errors", "wire", "common", "routing"}),
    "deploy": frozenset({"errors", "common"}),
}
# Inside the engine: trainers get what they need through TrainContext (a narrow TrainResources), so
# engine/training never reaches back into the modules that start runs.
INNER: dict[str, frozenset[str]] = {
    "engine/training/": frozenset(
        {
            "cuvis_cluster.engine.facade",
            "cuvis_cluster.engine.trainruns",
            "cuvis_cluster.engine.sessions",
            "cuvis_cluster.engine.api",
        }
    ),
}
# Third-party packages a layer must never import, whatever the code path.
FORBIDDEN_EXTERNAL: dict[str, frozenset[str]] = {
    "engine": frozenset({"grpc", "grpc_health", "grpc_reflection", "redis"}),
    "gateway": frozenset({"torch", "lightning", "hydra"}),
    "routing": frozenset({"torch", "lightning", "hydra"}),
    "client": frozenset({"torch", "lightning", "hydra", "redis"}),
}
# Generated code is checked by its generator, not here.
SKIP = ("wire/gen/",)


def _layer_of(path: Path, package: Path) -> str:
    rel = path.relative_to(package)
    return rel.parts[0].removesuffix(".py")


def _module_of(path: Path, package: Path) -> list[str]:
    rel = path.relative_to(package).with_suffix("")
    parts = [TOP, *rel.parts]
    return parts[:-1] if parts[-1] == "__init__" else parts


def imports_of(path: Path, package: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) for every import statement in ``path``; relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = _module_of(path, package)
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here if is_package else here[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target == TOP:  # `from cuvis_cluster import errors`: a name is a module or the root's own
                for alias in node.names:
                    is_module = (package / alias.name).is_dir() or (package / f"{alias.name}.py").is_file()
                    yield node.lineno, f"{TOP}.{alias.name}" if is_module else TOP
            else:
                yield node.lineno, target


def violations(package: Path) -> list[str]:
    found: list[str] = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package).as_posix()
        if rel.startswith(SKIP) or rel == "__init__.py":
            continue
        layer = _layer_of(path, package)
        if layer not in ALLOWED:
            found.append(f"{rel}: layer {layer!r} is not in the layer table; add it to tests/test_layers.py")
            continue
        inner = [bad for prefix, bad in INNER.items() if rel.startswith(prefix)]
        for line, module in imports_of(path, package):
            if any(module in bad or module.startswith(tuple(m + "." for m in bad)) for bad in inner):
                found.append(f"{rel}:{line}: {rel.rsplit('/', 1)[0]} must not import {module}")
            parts = module.split(".")
            if parts[0] == TOP and len(parts) > 1:
                target = parts[1]
                if target != layer and target not in ALLOWED[layer]:
                    found.append(f"{rel}:{line}: {layer} must not import {target} ({module})")
            elif parts[0] in FORBIDDEN_EXTERNAL.get(layer, frozenset()):
                found.append(f"{rel}:{line}: {layer} must not import {parts[0]} ({module})")
    return found


def test_imports_run_one_way():
    assert violations(PACKAGE) == []


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


@pytest.mark.parametrize(
    ("rel", "source", "expected"),
    [
        ("worker/m.py", "from cuvis_cluster.gateway import router\n", "worker must not import gateway"),
        (
            "engine/m.py",
            "def f():\n    from cuvis_cluster.wire import codec\n",
            "engine must not import wire",
        ),
        ("engine/m.py", "import cuvis_cluster.worker.servicer\n", "engine must not import worker"),
        ("engine/m.py", "import grpc\n", "engine must not import grpc"),
        ("gateway/m.py", "from cuvis_cluster.engine import facade\n", "gateway must not import engine"),
        ("gateway/m.py", "import torch\n", "gateway must not import torch"),
        ("client/m.py", "from cuvis_cluster import engine\n", "client must not import engine"),
        ("routing/m.py", "from cuvis_cluster.gateway import registry\n", "routing must not import gateway"),
        ("engine/sub/m.py", "from ...worker import main\n", "engine must not import worker"),
        (
            "engine/training/m.py",
            "from cuvis_cluster.engine.facade import Engine\n",
            "engine/training must not import cuvis_cluster.engine.facade",
        ),
        (
            "engine/training/m.py",
            "from ..sessions import Session\n",
            "must not import cuvis_cluster.engine.sessions",
        ),
        ("newroom/m.py", "x = 1\n", "layer 'newroom' is not in the layer table"),
    ],
)
def test_a_wrong_way_import_is_caught(tmp_path, rel, source, expected):
    package = tmp_path / TOP
    _write(package, "__init__.py", "")
    for layer in ALLOWED:
        _write(package, f"{layer}/__init__.py", "")
    _write(package, rel, source)
    found = violations(package)
    assert any(expected in v for v in found), found


def test_right_way_imports_pass(tmp_path):
    package = tmp_path / TOP
    _write(package, "__init__.py", "")
    _write(package, "worker/m.py", "from cuvis_cluster.engine import facade\nfrom ..routing import keys\n")
    _write(package, "gateway/m.py", "from cuvis_cluster.routing import keys\nimport grpc\n")
    _write(package, "engine/m.py", "from . import types\nfrom .nodes import base\nimport torch\n")
    assert violations(package) == []
