"""Allow-listed import of node classes named by a pipeline's ``class_name``.

A ``class_name`` is untrusted text from a client. Importing it must never become arbitrary code
execution, so the name is checked *before* anything is imported:

* it must be dotted identifiers (``pkg.module.Class``): no relative names, no empty parts, no odd
  characters, no dunder parts (``cuvis_ai.__class__``) and no private top-level package;
* its top-level package must be on the allow-list (``cuvis_ai`` by default; the setting
  ``class_packages``), compared as a whole component (``cuvis_ai_evil`` is not ``cuvis_ai``);
* after the import, the attribute must be a class deriving from ``cuvis_ai_core.node.Node`` whose own
  module also lies in an allowed package (a re-exported ``os.system`` is neither).

Plugin packages are not imported through here: the plugin loader imports them from allow-listed
plugin roots and registers their classes per session.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from cuvis_cluster.errors import InvalidArgument

DEFAULT_PACKAGES: tuple[str, ...] = ("cuvis_ai",)
_PART = r"[A-Za-z][A-Za-z0-9_]*|_[A-Za-z0-9][A-Za-z0-9_]*"
CLASS_NAME = re.compile(rf"(?:{_PART})(?:\.(?:{_PART}))+")  # used with fullmatch (no trailing newline)
MAX_CLASS_NAME = 300


def check_name(class_name: str, packages: Iterable[str], field: str) -> tuple[str, str]:
    """(module, attribute) of an allowed ``class_name``, or InvalidArgument; imports nothing."""
    allowed = tuple(packages)
    if (
        not isinstance(class_name, str)
        or len(class_name) > MAX_CLASS_NAME
        or not CLASS_NAME.fullmatch(class_name)
    ):
        raise InvalidArgument(
            f"class_name {class_name!r} is not a full class name (dotted identifiers, e.g. "
            "'cuvis_ai.node.anomaly.rx_detector.RXGlobal')",
            field=field,
        )
    parts = class_name.split(".")
    if any(p.startswith("__") or p.endswith("__") for p in parts):
        raise InvalidArgument(f"class_name {class_name!r}: dunder names are refused", field=field)
    if parts[0] not in allowed:
        raise InvalidArgument(
            f"class_name {class_name!r} is not in an allow-listed package ({', '.join(allowed) or 'none'}); "
            "other classes come only from plugins loaded from a plugin root",
            field=field,
        )
    module, _, attr = class_name.rpartition(".")
    return module, attr


def is_allowed(class_name: str, packages: Iterable[str]) -> bool:
    try:
        check_name(class_name, packages, "class_name")
    except InvalidArgument:
        return False
    return True


def upstream_node_base() -> type | None:
    """``cuvis_ai_core.node.Node`` (cheap to import), or None when cuvis-ai-core is not installed."""
    try:
        from cuvis_ai_core.node import Node as UpstreamNode
    except ImportError:  # pragma: no cover - the worker image installs it
        return None
    return UpstreamNode


def import_node_class(class_name: str, packages: Iterable[str], field: str) -> type:
    """Import an allow-listed upstream Node subclass by its full name (lazy: only when asked)."""
    allowed = tuple(packages)
    module_name, attr = check_name(class_name, allowed, field)
    base = upstream_node_base()
    if base is None:
        raise InvalidArgument(
            f"class_name {class_name!r}: cuvis-ai-core is not installed in this worker", field=field
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise InvalidArgument(
                f"unknown class_name {class_name!r}: no module {missing!r}", field=field
            ) from None
        raise InvalidArgument(
            f"class_name {class_name!r}: importing {module_name} failed ({type(exc).__name__}: {exc}); "
            "is the cuvis-ai package installed in the worker?",
            field=field,
        ) from None
    cls = module.__dict__.get(attr)
    if cls is None:
        raise InvalidArgument(
            f"unknown class_name {class_name!r}: {module_name} has no {attr!r}", field=field
        )
    if not isinstance(cls, type) or not issubclass(cls, base) or cls is base:
        raise InvalidArgument(
            f"class_name {class_name!r} is not a node class (a cuvis_ai_core.node.Node subclass)", field=field
        )
    own = getattr(cls, "__module__", "") or ""
    if own.split(".", 1)[0] not in allowed or own not in sys.modules:
        raise InvalidArgument(
            f"class_name {class_name!r} is defined outside the allow-listed packages", field=field
        )
    return cls


BUILTIN_MANIFEST = "configs/plugins/cuvis_ai_builtin.yaml"
_MANIFEST_CACHE: dict[str, list[dict[str, Any]]] = {}


def builtin_manifest() -> list[dict[str, Any]]:
    """The node entries of upstream's ``cuvis_ai_builtin`` manifest, read from the installed wheel.

    Located through ``importlib.util.find_spec`` so that nothing of ``cuvis_ai`` is imported; an empty
    list when cuvis-ai is not installed.
    """
    cached = _MANIFEST_CACHE.get("builtin")
    if cached is not None:
        return cached
    entries: list[dict[str, Any]] = []
    spec = importlib.util.find_spec("cuvis_ai")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / BUILTIN_MANIFEST
        if path.is_file():
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            caps = data.get("capabilities") if isinstance(data, dict) else None
            entries = [
                c
                for c in (caps or [])
                if isinstance(c, dict)
                and c.get("kind", "node") == "node"
                and isinstance(c.get("class_name"), str)
            ]
            break
    _MANIFEST_CACHE["builtin"] = entries
    return entries
