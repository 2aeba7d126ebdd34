"""Session-scoped node plugins loaded from allow-listed directories.

A plugin is a local Python package or directory, declared by a JSON manifest::

    {"name": "acme_nodes",
     "path": "acme_nodes",                 # absolute, or relative to one of the plugin roots
     "nodes": ["Threshold", "prep:MinMax"], # class names in the top-level module, or "module:Class"
     "tags": ["demo"], "description": "..."}

Upstream's spelling ``capabilities: [{"class_name": "acme_nodes.prep.MinMax", "category": .., "tags": []}]``
is accepted as well (a dotted class name is read as ``module.Class`` inside the plugin).

Rules:

* The source must resolve (symlinks included) inside one of the worker's plugin roots
  (``--plugin-dirs`` / ``EngineConfig.plugin_dirs``); anything else is refused with PermissionDenied.
* Code is imported only from files under that source, with ``importlib.util.spec_from_file_location``
  under a module name unique to the session and the load. Client-supplied module names are never handed
  to the normal import system as dotted paths: they only name files inside the plugin.
* The node classes are added to that one session's ``NodeRegistry``; other sessions do not see them.

Bad JSON (or a manifest that is not an object) is InvalidArgument. A manifest that parses but is wrong
(missing fields, unknown classes, an import error in the plugin) is reported in ``LoadPluginResponse.error``
with an OK status, as upstream does.
"""

from __future__ import annotations

import builtins
import importlib
import importlib.machinery
import importlib.util
import itertools
import re
import sys
import threading
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cuvis_cluster.engine.bounds import check_path, client_path, parse_document, shown
from cuvis_cluster.engine.nodes.base import (
    BUILTIN_PLUGIN,
    Node,
    NodeRegistry,
    NodeType,
    Port,
    native_index,
    preferred_name,
)
from cuvis_cluster.engine.nodes.classes import builtin_manifest, is_allowed, upstream_node_base
from cuvis_cluster.engine.nodes.hosted import hosted_class
from cuvis_cluster.engine.types import NodeInfo, PluginInfo, PortSpec
from cuvis_cluster.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied

IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MODULE_PREFIX = "cuvis_plugin_"
MAX_MANIFEST_BYTES = 1 << 20


class NodeEntry(BaseModel):
    model_config = ConfigDict(extra="ignore")

    class_name: str
    category: str | None = None
    tags: list[str] = Field(default_factory=list)

    @field_validator("class_name")
    @classmethod
    def _check(cls, value: str) -> str:
        module, _, name = value.rpartition(":") if ":" in value else value.rpartition(".")
        if not IDENT.match(name):
            raise ValueError(f"{value!r}: the class name must be an identifier")
        if module and not all(IDENT.match(part) for part in module.split(".")):
            raise ValueError(f"{value!r}: the module part must be dot-separated identifiers")
        return value


class PluginManifest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    path: str = Field(description="Absolute path, or a path relative to a plugin root.")
    nodes: list[NodeEntry] = Field(min_length=1)
    tags: list[str] = Field(default_factory=list)
    description: str = ""

    @model_validator(mode="before")
    @classmethod
    def _upstream(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if data.get("repo") and not data.get("path"):
            raise ValueError(
                "git sources ('repo'/'tag') are not supported; give a local 'path' under a plugin root"
            )
        if "nodes" not in data and isinstance(data.get("capabilities"), list):
            data["nodes"] = [
                c for c in data["capabilities"] if not isinstance(c, dict) or c.get("kind", "node") == "node"
            ]
        if isinstance(data.get("nodes"), list):
            data["nodes"] = [{"class_name": n} if isinstance(n, str) else n for n in data["nodes"]]
        return data

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not IDENT.match(value):
            raise ValueError(f"plugin name {value!r} must be an identifier (letters, digits, '_')")
        return value

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("path is empty")
        return value


@dataclass
class LoadedPlugin:
    name: str
    source: Path
    module_name: str
    classes: dict[str, NodeType]
    entries: dict[str, NodeEntry]
    tags: list[str] = field(default_factory=list)
    description: str = ""

    def info(self) -> PluginInfo:
        return PluginInfo(
            name=self.name,
            type="local",
            source=str(self.source),
            tag="",
            capabilities=tuple(sorted(self.classes)),
        )


class PluginError(Exception):
    """A problem with the plugin itself; reported in ``LoadPluginResponse.error``."""


# Process-wide bookkeeping of the module trees we created, for ClearPluginCache.
_LOCK = threading.Lock()
_COUNTER = itertools.count(1)
_MODULE_TREES: dict[str, list[str]] = {}  # plugin name -> root module names of its loads


def _under(path: Path, roots: list[Path]) -> Path | None:
    for root in roots:
        try:
            path.relative_to(root)
            return root
        except ValueError:
            continue
    return None


class PluginManager:
    """Loads plugins into sessions. ``roots`` are the allow-listed plugin directories."""

    def __init__(self, roots: list[Path]) -> None:
        self.roots = [Path(r).expanduser().resolve() for r in roots]

    # -- source resolution ---------------------------------------------------------------------------
    def resolve_source(self, raw: str) -> Path:
        if not self.roots:
            raise PermissionDenied(
                "no plugin roots are configured on this worker (--plugin-dirs / CUVIS_PLUGIN_DIRS); "
                "plugins are refused",
                field="path",
            )
        check_path(raw, "manifest.path")
        with client_path("manifest.path", raw):
            given = Path(raw).expanduser()
            candidates = [given] if given.is_absolute() else [root / given for root in self.roots]
            for candidate in candidates:
                resolved = candidate.resolve()
                if _under(resolved, self.roots) is None:
                    raise PermissionDenied(
                        f"plugin path {shown(raw)} resolves outside the allowed plugin roots "
                        f"({', '.join(str(r) for r in self.roots)})",
                        field="path",
                    )
                if resolved.exists():
                    return resolved
        raise PluginError(f"plugin path {shown(raw)} does not exist under the plugin roots")

    # -- loading ---------------------------------------------------------------------------------
    def load(self, session: Any, manifest_bytes: bytes | str) -> tuple[str, str]:
        """LoadPlugin: (registered name, "") on success, ("", error) for a bad manifest or plugin."""
        raw = manifest_bytes.encode() if isinstance(manifest_bytes, str) else bytes(manifest_bytes or b"")
        if not raw.strip():
            raise InvalidArgument("the plugin manifest is empty", field="manifest")
        if len(raw) > MAX_MANIFEST_BYTES:
            raise InvalidArgument(f"the plugin manifest exceeds {MAX_MANIFEST_BYTES} bytes", field="manifest")
        data = parse_document(raw, "manifest")  # JSON, or YAML as upstream writes manifests
        if not isinstance(data, dict):
            raise InvalidArgument("the plugin manifest must be a JSON/YAML mapping", field="manifest")
        remote = data.get("repo") or data.get("git") or data.get("url")
        if remote and not data.get("path"):
            raise FailedPrecondition(
                f"plugin {data.get('name')!r} has a git/network source ({remote}): this worker does not "
                "fetch plugins over the network; install it under a plugin root and give a local 'path'",
                field="manifest",
            )
        try:
            manifest = PluginManifest.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'manifest'}: {e['msg']}"
                for e in exc.errors(include_url=False)
            )
            return "", f"invalid plugin manifest: {problems}"
        try:
            source = self.resolve_source(manifest.path)
            plugin = self._import(session, manifest, source)
        except PluginError as exc:
            return "", f"plugin {manifest.name!r}: {exc}"
        registry: NodeRegistry = session.registry
        for key, cls in plugin.classes.items():
            registry.add(cls, plugin.name, key)
        self.plugins_of(session)[plugin.name] = plugin
        return plugin.name, ""

    def _import(self, session: Any, manifest: PluginManifest, source: Path) -> LoadedPlugin:
        session_tag = re.sub(r"[^0-9a-f]", "", str(getattr(session, "id", "")))[:12] or "s"
        root_name = f"{MODULE_PREFIX}{session_tag}_{manifest.name}_{next(_COUNTER)}"
        allowed_root = _under(source, self.roots)
        assert allowed_root is not None
        try:
            top = self._import_top(root_name, source)
            classes: dict[str, NodeType] = {}
            entries: dict[str, NodeEntry] = {}
            for entry in manifest.nodes:
                cls = self._find_class(top, root_name, source, entry.class_name, manifest.name)
                key = entry.class_name.replace(":", ".")
                if key in native_index():
                    raise PluginError(f"class {key} would shadow the native node class of that full name")
                if _is_upstream_node(cls):
                    cls = hosted_class(cls, key, getattr(session.registry, "output_root", None))
                else:
                    cls.type_name = cls.__name__  # not the (possibly inherited) type name of a built-in base
                    cls.class_name = key
                classes[key] = cls
                entries[key] = entry
            self._check_files(root_name, allowed_root)
        except PluginError:
            self._drop_tree(root_name)
            raise
        except Exception as exc:  # the plugin's own code failed to import
            self._drop_tree(root_name)
            last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
            where = f" ({Path(last[0].filename).name}:{last[0].lineno})" if last else ""
            raise PluginError(f"import failed: {type(exc).__name__}: {exc}{where}") from None
        with _LOCK:
            _MODULE_TREES.setdefault(manifest.name, []).append(root_name)
        return LoadedPlugin(
            name=manifest.name,
            source=source,
            module_name=root_name,
            classes=classes,
            entries=entries,
            tags=list(manifest.tags),
            description=manifest.description,
        )

    def _import_top(self, root_name: str, source: Path) -> ModuleType:
        if source.is_file():
            if source.suffix != ".py":
                raise PluginError(f"{source.name} is not a Python file")
            spec = importlib.util.spec_from_file_location(root_name, source)
        elif (source / "__init__.py").is_file():
            spec = importlib.util.spec_from_file_location(
                root_name, source / "__init__.py", submodule_search_locations=[str(source)]
            )
        elif source.is_dir():
            # A plain directory of modules: a synthetic package whose only search location is that directory.
            spec = importlib.machinery.ModuleSpec(root_name, None, is_package=True)
            spec.submodule_search_locations = [str(source)]
        else:
            raise PluginError(f"{source} is neither a Python file nor a directory")
        if spec is None:
            raise PluginError(f"cannot import {source}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[root_name] = module
        if spec.loader is not None:
            spec.loader.exec_module(module)
        return module

    def _find_class(self, top: ModuleType, root_name: str, source: Path, ref: str, plugin: str) -> NodeType:
        if ":" in ref:
            module_part, _, class_name = ref.rpartition(":")
        else:
            module_part, _, class_name = ref.rpartition(".")
            parts = module_part.split(".") if module_part else []
            if parts and parts[0] in (plugin, source.stem, source.name):
                parts = parts[1:]  # upstream FQCNs start with the package name
            module_part = ".".join(parts)
        module = top
        if module_part:
            if not hasattr(top, "__path__"):
                raise PluginError(f"{ref!r}: the plugin is a single file; name classes without a module")
            try:
                module = importlib.import_module(f"{root_name}.{module_part}")
            except ModuleNotFoundError as exc:
                if exc.name and exc.name.startswith(root_name):
                    raise PluginError(f"{ref!r}: module {module_part!r} not found in {source}") from None
                raise
        cls = getattr(module, class_name, None)
        if cls is None:
            raise PluginError(f"{ref!r}: no class {class_name!r} in {module_part or 'the top-level module'}")
        if not isinstance(cls, type) or cls is Node or not (issubclass(cls, Node) or _is_upstream_node(cls)):
            raise PluginError(f"{ref!r} is not a Node subclass (cuvis_ai_core.node.Node)")
        return cls

    def _check_files(self, root_name: str, allowed_root: Path) -> None:
        """Every module file of the load must lie under the plugin root (no symlinked files out of it)."""
        for name, module in list(sys.modules.items()):
            if name != root_name and not name.startswith(root_name + "."):
                continue
            filename = getattr(module, "__file__", None)
            if filename and _under(Path(filename).resolve(), [allowed_root]) is None:
                raise PluginError(f"module file {filename} lies outside the plugin root {allowed_root}")

    @staticmethod
    def _drop_tree(root_name: str) -> int:
        names = [n for n in list(sys.modules) if n == root_name or n.startswith(root_name + ".")]
        for name in names:
            sys.modules.pop(name, None)
        return len(names)

    # -- queries ---------------------------------------------------------------------------------
    @staticmethod
    def plugins_of(session: Any) -> dict[str, LoadedPlugin]:
        plugins: dict[str, LoadedPlugin] = session.plugins
        return plugins

    # ``list`` below shadows the builtin inside this class body, hence ``builtins.list`` in annotations.
    def list(self, session: Any) -> builtins.list[PluginInfo]:
        return [p.info() for p in self.plugins_of(session).values()]

    def info(self, session: Any, name: str) -> PluginInfo:
        plugin = self.plugins_of(session).get(name)
        if plugin is None:
            raise NotFound(f"plugin {name!r} is not loaded in session {session.id}", field="plugin_name")
        return plugin.info()

    def list_nodes(self, session: Any | None) -> builtins.list[NodeInfo]:
        """Every class the session can name: native, its plugins', and allow-listed cuvis-ai classes.

        cuvis-ai classes come from upstream's builtin manifest (nothing of ``cuvis_ai.node`` is imported).
        """
        registry: NodeRegistry = session.registry if session is not None else NodeRegistry()
        plugins = self.plugins_of(session) if session is not None else {}
        rows = []
        index = native_index()
        served = set(index)
        for key, cls in sorted(index.items()):
            if key in cls.UPSTREAM_CLASSES or not cls.UPSTREAM_CLASSES:  # one row per upstream name it serves
                rows.append(describe_node(cls, None, None, key))
        for key, cls in sorted(registry.types().items()):
            if key in served:
                continue
            plugin_name = registry.plugin_of(key)
            entry = plugins[plugin_name].entries.get(key) if plugin_name in plugins else None
            rows.append(describe_node(cls, plugin_name, entry, key))
            served.add(key)
        if is_allowed("cuvis_ai.node.Node", registry.packages):
            for item in builtin_manifest():
                if item["class_name"] not in served:
                    rows.append(describe_manifest_entry(item))
        return rows

    @staticmethod
    def clear_cache(plugin_name: str | None = None) -> int:
        """Drop the cached module trees (of one plugin or all); returns how many loads were dropped.

        Sessions keep the classes they registered; the next LoadPlugin imports the files afresh.
        """
        with _LOCK:
            names = [plugin_name] if plugin_name else list(_MODULE_TREES)
            roots = [r for n in names for r in _MODULE_TREES.pop(n, [])]
        for root in roots:
            PluginManager._drop_tree(root)
        importlib.invalidate_caches()
        return len(roots)


def port_spec(name: str, port: Port) -> PortSpec:
    return PortSpec(
        name=name,
        dtype=port.wire_dtype,
        shape=port.wire_shape,
        optional=bool(port.optional),
        description=port.description,
        variadic=bool(getattr(port, "variadic", False)),
    )


def describe_node(
    cls: NodeType, plugin_name: str | None, entry: NodeEntry | None = None, class_name: str = ""
) -> NodeInfo:
    """ListAvailableNodes entry for one class: ``full_path`` is the exact name a config uses."""
    tags = list(dict.fromkeys([*cls.TAGS, *(entry.tags if entry else [])]))
    full_path = class_name or preferred_name(cls)
    return NodeInfo(
        class_name=full_path.rsplit(".", 1)[-1],
        full_path=full_path,
        source="plugin" if plugin_name else "native",
        plugin_name=plugin_name or "",
        inputs={n: port_spec(n, p) for n, p in cls.INPUTS.items()},
        outputs={n: port_spec(n, p) for n, p in cls.OUTPUTS.items()},
        category=(entry.category if entry and entry.category else cls.CATEGORY),
        tags=tuple(tags),
        description=cls.DESCRIPTION or (cls.__doc__ or "").strip().split("\n", 1)[0],
    )


def _manifest_port(name: str, raw: Any) -> PortSpec:
    spec = raw if isinstance(raw, dict) else {}
    shape = tuple(d if isinstance(d, int) else -1 for d in (spec.get("shape") or ()))
    return PortSpec(
        name=name,
        dtype=str(spec.get("dtype") or "float32"),
        shape=shape,
        optional=bool(spec.get("optional", False)),
        description=str(spec.get("description") or ""),
        variadic=bool(spec.get("variadic", False)),
    )


def describe_manifest_entry(item: dict[str, Any]) -> NodeInfo:
    """A cuvis-ai class that the worker hosts (upstream code), described from upstream's manifest."""
    full = str(item["class_name"])
    icon = item.get("icon_svg")
    return NodeInfo(
        class_name=full.rsplit(".", 1)[-1],
        full_path=full,
        source="cuvis-ai",
        plugin_name=BUILTIN_PLUGIN,
        inputs={n: _manifest_port(n, p) for n, p in (item.get("input_specs") or {}).items()},
        outputs={n: _manifest_port(n, p) for n, p in (item.get("output_specs") or {}).items()},
        category=str(item.get("category") or "transform"),
        tags=tuple(str(t) for t in (item.get("tags") or ())),
        description=str(item.get("doc_summary") or ""),
        icon_svg=icon.encode("utf-8") if isinstance(icon, str) else b"",
    )


def _is_upstream_node(cls: Any) -> bool:
    base = upstream_node_base()
    return base is not None and isinstance(cls, type) and issubclass(cls, base) and cls is not base
