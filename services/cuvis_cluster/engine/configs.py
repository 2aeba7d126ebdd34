"""ResolveConfig: Hydra composition of the configs tree, with overrides, into a validated JSON-able dict.

Resolution of ``path`` for ``config_type``:

1. ``.yaml`` is added when the name has no YAML suffix. A relative path is looked up in the session's
   search paths in order, as given and under ``<config_type>/``; the first match wins. An absolute path
   must lie inside a search path or an allowed root. Symlinks are resolved before the check.
2. The search path where the file was found is the Hydra root, and the relative path without suffix is
   the ``config_name``, so defaults lists across the groups (``/data@data: lentils_synthetic``) work.
   When the file sits directly in a group directory that is itself the search path (the upstream
   clients add ``configs/trainrun`` etc.), the group's parent becomes the root.
3. Overrides are applied once, by Hydra's ``compose``. Name-addressed node overrides
   (``pipeline.nodes.<node_name>.params.<param>=<value>``, also ``.hparams.``) are first translated to
   the list index Hydra understands; a param the YAML does not set yet is added (``++``).
4. A trainrun's pipeline (a path relative to the trainrun file, as upstream, or a Hydra
   ``/pipeline@pipeline`` default) is composed with the ``pipeline.*`` overrides, written in canonical
   form, content-addressed, to ``<output root>/resolved/pipeline-<sha>.yaml``, and the resolved trainrun
   references that file by its absolute path (the published TrainRunConfig takes a path, never an
   inline pipeline). SetTrainRunConfig reads it back from there.
5. The result is validated with the engine's model of ``config_type`` and returned in the canonical form
   (:mod:`.canonical`), which validates under the published ``cuvis_ai_schemas`` model.

Hydra's ``GlobalHydra`` is process-wide, so every compose runs under one module lock and clears it.
Overrides come from clients and must not contain OmegaConf interpolations (``${...}``): they are refused
with InvalidArgument naming the override, so a client cannot resolve ``${oc.env:...}`` on the worker.
Errors: a missing file -> NotFound; a path outside the roots -> PermissionDenied; ``..`` in a relative
path, Hydra/YAML/override errors and validation failures -> InvalidArgument naming the field path.
"""

from __future__ import annotations

import re
import threading
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from pydantic import BaseModel

from cuvis_cluster.engine import bounds, canonical, schemas
from cuvis_cluster.engine.roots import atomic_write, yaml_bytes
from cuvis_cluster.errors import CuvisError, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied

GROUPS = ("pipeline", "trainrun", "data", "training")
_HYDRA_LOCK = threading.Lock()
# ``nodes.<name>[.rest]=value`` (modifiers already split off)
_NODE_OVERRIDE = re.compile(r"^nodes\.(?P<node>[^.=\[\]]+)(?P<rest>\.[^=]*)?(?P<value>=.*)?$", re.S)
_YAML_SUFFIXES = (".yaml", ".yml")


# ---------------------------------------------------------------------------------------------------------
# locating files
# ---------------------------------------------------------------------------------------------------------
def _inside(real: Path, dirs: Iterable[Path]) -> bool:
    for d in dirs:
        try:
            base = d.resolve()
        except OSError:
            continue
        if real == base or real.is_relative_to(base):
            return True
    return False


def _with_suffix(text: str, field: str = "path") -> Path:
    p = Path(text)
    if p.name in ("", ".", ".."):
        raise InvalidArgument(f"{field}: {bounds.shown(text)} does not name a config file", field=field)
    return p if p.suffix in _YAML_SUFFIXES else p.with_name(p.name + ".yaml")


def locate(
    config_type: str, path: str, search_paths: Sequence[Path], roots: Sequence[Path]
) -> tuple[Path, str, Path]:
    """(Hydra root, config_name, real file) for ``path``; see the module docstring."""
    text = (path or "").strip()
    if not text:
        raise InvalidArgument("path: a config path is required", field="path")
    bounds.check_path(text, "path")
    with bounds.client_path("path", text):
        return _locate(config_type, text, search_paths, roots)


def _locate(
    config_type: str, text: str, search_paths: Sequence[Path], roots: Sequence[Path]
) -> tuple[Path, str, Path]:
    allowed = [*search_paths, *roots]
    wanted = _with_suffix(text)
    if wanted.is_absolute():
        real = wanted.resolve()
        if not _inside(real, allowed):
            raise PermissionDenied(
                f"path: {bounds.shown(text)} lies outside the session's search paths and the allowed roots",
                field="path",
            )
        if not real.is_file():
            raise NotFound(f"config {bounds.shown(text)} not found", field="path")
        base = next(Path(d).resolve() for d in allowed if _inside(real, [d]))
        return _hydra_root(base, real.relative_to(base), allowed, real)
    if ".." in wanted.parts:
        raise InvalidArgument(f"path: {bounds.shown(text)} must not contain '..'", field="path")
    candidates = [wanted]
    if config_type in GROUPS and wanted.parts[0] != config_type:
        candidates.append(Path(config_type) / wanted)
    for base in search_paths:
        for rel in candidates:
            file = base / rel
            if not file.is_file():
                continue
            real = file.resolve()
            if not _inside(real, allowed):
                raise PermissionDenied(
                    f"path: {bounds.shown(text)} resolves (through a symlink) outside the allowed roots",
                    field="path",
                )
            return _hydra_root(base, rel, allowed, real)
    shown = ", ".join(str(p) for p in search_paths) or "(none)"
    raise NotFound(
        f"config {bounds.shown(text)} ({config_type}) not found in the search paths: {shown}", field="path"
    )


def _hydra_root(base: Path, rel: Path, allowed: Sequence[Path], real: Path) -> tuple[Path, str, Path]:
    base = base.absolute()
    # A search path that *is* a group directory (configs/trainrun): compose from its parent so that the
    # cross-group defaults (/data@data: ...) resolve.
    if len(rel.parts) == 1 and base.name in GROUPS and _inside(base.parent.resolve(), allowed):
        rel = Path(base.name) / rel
        base = base.parent
    return base, rel.with_suffix("").as_posix(), real


# ---------------------------------------------------------------------------------------------------------
# Hydra
# ---------------------------------------------------------------------------------------------------------
def _first_lines(exc: BaseException, n: int = 3) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(line.strip() for line in text.splitlines()[:n] if line.strip())


def _refuse_env(*_args: Any, **_kwargs: Any) -> Any:
    raise InvalidArgument(
        "${oc.env:...} interpolations are disabled: configs may not read the server's environment"
    )


def compose(root: Path, config_name: str, overrides: Sequence[str], what: str) -> dict[str, Any]:
    """One Hydra compose under the module lock; any Hydra/YAML/override error -> InvalidArgument."""
    with _HYDRA_LOCK:
        # Files under the output root are written from client content (pipeline metadata, configs), so
        # no config may read the worker's environment (tokens, Redis passwords).
        OmegaConf.register_new_resolver("oc.env", _refuse_env, replace=True)
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir=str(root), version_base=None, job_name="cuvis_resolve"):
                cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
            data = OmegaConf.to_container(cfg, resolve=True)
        except CuvisError:
            raise
        except Exception as exc:  # hydra.errors.*, omegaconf errors, yaml errors
            raise InvalidArgument(
                f"{what}: {_first_lines(exc)}", field="overrides" if overrides else "path"
            ) from None
        finally:
            GlobalHydra.instance().clear()
    if not isinstance(data, dict):
        raise InvalidArgument(f"{what}: the config is not a mapping", field="path")
    # OmegaConf types a container's keys loosely (str | int | Enum ...); a composed config's are names.
    return typing.cast(dict[str, Any], data)


_OVERRIDE_PARTS = re.compile(r"^(?P<mods>[+~]{0,2})(?P<key>[^=]*)(?P<rest>=.*)?$", re.S)


def _split(override: str) -> tuple[str, str, str]:
    """(modifiers, key, "=value" or "") of one override."""
    m = _OVERRIDE_PARTS.match(override)
    assert m is not None
    return m.group("mods"), m.group("key").strip(), m.group("rest") or ""


def _check_overrides(overrides: Iterable[str]) -> list[str]:
    out = []
    for i, item in enumerate(overrides):
        if not isinstance(item, str) or not item.strip():
            raise InvalidArgument(f"overrides[{i}]: empty override", field=f"overrides.{i}")
        item = item.strip()
        if "${" in item:
            # OmegaConf would resolve it on the worker (``${oc.env:HOME}``, ``${oc.decode:...}``): a client
            # must not be able to read the worker's environment or files through an override. Interpolations
            # in the trusted config files themselves still resolve.
            raise InvalidArgument(
                f"overrides[{i}]: interpolations are not allowed in overrides", field=f"overrides.{i}"
            )
        mods, key, rest = _split(item)
        if not key or (not rest and not mods.startswith("~")):
            raise InvalidArgument(
                f"overrides[{i}]: {item!r} is not of the form key=value", field=f"overrides.{i}"
            )
        out.append(item)
    return out


def _is_group_override(key: str) -> bool:
    return "/" in key or "@" in key


_TRAINER_FIELDS = set(schemas.TrainerConfig.model_fields)
_TRAINING_FIELDS = set(schemas.TrainingConfig.model_fields)
_TRAINRUN_FIELDS = set(schemas.TrainRunConfig.model_fields)


def _normalize(kind: str, override: str) -> str:
    """An override key made relative to the config's own content, in the canonical (flat) spelling.

    ``training.optimizer.lr`` on a training config drops the ``training.`` prefix; our old nested trainer
    keys (``training.trainer.max_epochs``) become upstream's flat ones (``training.max_epochs``); on a
    trainrun, bare training and trainer keys (``seed``, ``max_epochs``, ``optimizer.lr``) move under
    ``training``.
    """
    mods, key, rest = _split(override)
    if _is_group_override(key):
        return override
    parts = key.split(".")
    if kind != "trainrun" and len(parts) > 1 and parts[0] == kind:
        parts = parts[1:]
    if kind == "training":
        if parts[0] == "trainer" and len(parts) > 1:
            parts = parts[1:]
    elif kind == "trainrun":
        if parts[0] not in _TRAINRUN_FIELDS and (parts[0] in _TRAINER_FIELDS or parts[0] in _TRAINING_FIELDS):
            parts = ["training", *parts]
        if parts[0] == "training" and len(parts) > 2 and parts[1] == "trainer":
            parts = ["training", *parts[2:]]
    return f"{mods}{'.'.join(parts)}{rest}"


def _field_target(annotation: Any) -> Any:
    """The model class, ``dict`` or ``("list", item)`` an annotation leads to (None for leaves)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _field_target(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _field_target(arg)
            if found is not None:
                return found
        return None
    if origin is list:
        args = typing.get_args(annotation)
        item = _field_target(args[0]) if args else None
        return ("list", item) if item is not None else None
    if annotation is dict or origin is dict:
        return dict
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def schema_knows(kind: str, parts: Sequence[str]) -> bool:
    """Whether the dotted path is a field of the config model of ``kind`` (anything under a dict field)."""
    current: Any = schemas.CONFIG_MODELS.get(kind)
    for i, part in enumerate(parts):
        if current is dict:
            return True
        if isinstance(current, tuple):
            if not part.isdigit():
                return False
            current = current[1]
            if i == len(parts) - 1:
                return True
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return False
        field = current.model_fields.get(part)
        if field is None and current is schemas.TrainingConfig and part in _TRAINER_FIELDS:
            return i == len(parts) - 1  # upstream's flat trainer keys
        if field is None:
            return False
        if i == len(parts) - 1:
            return True
        current = _field_target(field.annotation)
    return True


def _to_hydra(kind: str, override: str, package: Sequence[str]) -> str:
    """The override as Hydra needs it: the config's package prepended, ``++`` for known schema fields.

    ``++`` (set or add) lets every documented field be overridden even when the YAML leaves it at its
    default; unknown keys stay plain, so Hydra (or validation) reports them.
    """
    mods, key, rest = _split(override)
    if _is_group_override(key):
        return override
    parts = key.split(".")
    # (a bare top-level key of a trainrun may name a Hydra group: ``data=indian_pines``)
    if mods == "" and schema_knows(kind, parts) and (len(parts) > 1 or kind != "trainrun"):
        mods = "++"
    return f"{mods}{'.'.join([*package, *parts])}{rest}"


def _package(file: Path, config_name: str) -> list[str]:
    """Where Hydra puts the primary config's content: its ``# @package`` header, else its group path."""
    group = config_name.split("/")[:-1]
    header = None
    try:
        with file.open(encoding="utf-8") as fh:
            for line in fh:
                text = line.strip()
                if not text:
                    continue
                if not text.startswith("#"):
                    break
                m = re.match(r"#\s*@package\s+(\S+)", text)
                if m:
                    header = m.group(1)
                    break
    except (OSError, UnicodeDecodeError):
        return group
    if header is None or header == "_group_":
        return group
    if header == "_global_":
        return []
    header = header.removeprefix("_global_.").replace("_group_", ".".join(group))
    return [p for p in header.split(".") if p]


def _unwrap(data: dict[str, Any], package: Sequence[str], what: str) -> dict[str, Any]:
    for part in package:
        inner = data.get(part) if isinstance(data, dict) else None
        if inner is None:
            return {}
        if not isinstance(inner, dict):
            raise InvalidArgument(f"{what}: expected a mapping under {'.'.join(package)}", field="path")
        data = inner
    return data


def _is_named_node(override: str) -> bool:
    _, key, rest = _split(override)
    m = _NODE_OVERRIDE.match(key + rest)
    # index-addressed ones too: their params/hparams spelling is mapped onto the YAML's
    return m is not None


def translate_node_overrides(overrides: Sequence[str], nodes: Any, where: str) -> list[str]:
    """Map ``nodes.<name>.…`` overrides (keys relative to a pipeline) to ``nodes.<index>.…``."""
    out = []
    node_list = nodes if isinstance(nodes, list) else []
    names = [n.get("name") if isinstance(n, dict) else None for n in node_list]
    for item in overrides:
        mods, key, rest = _split(item)
        m = _NODE_OVERRIDE.match(key + rest)
        if m is None or (m.group("node").isdigit() and int(m.group("node")) >= len(node_list)):
            out.append(item)  # Hydra reports an index out of range
            continue
        name = m.group("node")
        if name.isdigit():
            name = names[int(name)]
        if name not in names:
            known = ", ".join(str(n) for n in names) or "(none)"
            raise InvalidArgument(
                f"overrides: {where}nodes.{name}: no node named {name!r}; nodes: {known}", field="overrides"
            )
        index = names.index(name)
        entry = node_list[index]
        tail = m.group("rest") or ""
        parts = tail.split(".")[1:] if tail else []
        if parts and parts[0] in ("params", "hparams"):
            present = "params" if "params" in entry else ("hparams" if "hparams" in entry else None)
            parts[0] = present or "params"
            container = entry.get(present) if present else None
            exists = isinstance(container, dict) and (len(parts) < 2 or parts[1] in container)
            if not exists and mods == "":
                mods = "++"
        elif parts and parts[0] in ("type", "class_name"):
            parts[0] = "type" if "type" in entry else ("class_name" if "class_name" in entry else "type")
        suffix = "." + ".".join(parts) if parts else ""
        out.append(f"{mods}nodes.{index}{suffix}{rest}")
    return out


def _compose_content(
    kind: str, root: Path, name: str, file: Path, overrides: Sequence[str], what: str
) -> dict[str, Any]:
    """Compose one config with overrides relative to its content; returns the (unwrapped) content."""
    package = _package(file, name)

    def run(ovrs: Sequence[str]) -> dict[str, Any]:
        composed = compose(root, name, [_to_hydra(kind, o, package) for o in ovrs], what)
        return _unwrap(composed, package, what)

    named = [o for o in overrides if kind == "pipeline" and _is_named_node(o)]
    plain = [o for o in overrides if o not in named]
    data = run(plain)
    if named:
        data = run([*plain, *translate_node_overrides(named, data.get("nodes"), "pipeline.")])
    return data


# ---------------------------------------------------------------------------------------------------------
# the entry point
# ---------------------------------------------------------------------------------------------------------
def resolve(
    config_type: str,
    path: str,
    overrides: Sequence[str] | None,
    search_paths: Sequence[Path],
    roots: Sequence[Path],
    output_dir: Path | None = None,
) -> dict[str, Any]:
    """Resolve, compose and validate; returns the canonical (published) JSON form.

    ``output_dir`` is where a trainrun's resolved pipeline is written (the output root); when it is not
    given, the third of ``roots`` (``Roots.allowed`` order: configs, data, output) is used.
    """
    kind = (config_type or "").strip().lower()
    if kind not in GROUPS:
        raise InvalidArgument(
            f"config_type: {config_type!r} cannot be resolved; use one of {', '.join(GROUPS)}",
            field="config_type",
        )
    ovrs = [_normalize(kind, o) for o in _check_overrides(overrides or [])]
    root, name, file = locate(kind, path, search_paths, roots)
    what = f"{kind} config {name!r}"
    if kind == "trainrun":
        data = _resolve_trainrun(root, name, file, ovrs, search_paths, roots, what)
    else:
        data = _compose_content(kind, root, name, file, ovrs, what)
    if kind == "trainrun":  # the pipeline was composed (inlined) here; its own spelling is checked
        canonical.warn_old_dialect("pipeline", data.get("pipeline"), f"pipeline of {str(file)!r}")
        rest = {k: v for k, v in data.items() if k != "pipeline"}
        canonical.warn_old_dialect(kind, rest, f"{kind} config {str(file)!r}")
    else:
        canonical.warn_old_dialect(kind, data, f"{kind} config {str(file)!r}")
    model = schemas.validate(kind, data)
    if isinstance(model, schemas.TrainRunConfig):
        ref = None
        if model.pipeline is not None:
            assert isinstance(model.pipeline, schemas.PipelineConfig)  # composed above
            out = output_dir if output_dir is not None else _output_root(roots)
            ref = str(write_resolved_pipeline(out, canonical.pipeline(model.pipeline)))
        return canonical.trainrun(model, ref)
    return canonical.to_canonical(kind, model)


def _output_root(roots: Sequence[Path]) -> Path:
    # ``Roots.allowed`` order: configs, data, output. Never guess a config or data root to write to.
    if len(roots) < 3:
        raise FailedPrecondition("no output root to write the trainrun's resolved pipeline to")
    return Path(roots[2])


def write_resolved_pipeline(output_dir: Path, pipeline: Mapping[str, Any]) -> Path:
    """Write a canonical pipeline to ``<output_dir>/resolved/pipeline-<sha>.yaml`` (once per content)."""
    path = canonical.resolved_pipeline_path(Path(output_dir), pipeline)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, yaml_bytes(dict(pipeline)))
    return path


def _resolve_trainrun(
    root: Path,
    name: str,
    file: Path,
    overrides: Sequence[str],
    search_paths: Sequence[Path],
    roots: Sequence[Path],
    what: str,
) -> dict[str, Any]:
    package = _package(file, name)

    def run(ovrs: Sequence[str]) -> dict[str, Any]:
        composed = compose(root, name, [_to_hydra("trainrun", o, package) for o in ovrs], what)
        return _unwrap(composed, package, what)

    pipeline_ovrs = [o for o in overrides if _split(o)[1].startswith("pipeline.")]
    plain = [o for o in overrides if o not in pipeline_ovrs]
    data = run(plain)
    pipeline = data.get("pipeline")
    if isinstance(pipeline, dict):
        if pipeline_ovrs:
            inner = [_strip_prefix(o, "pipeline") or o for o in pipeline_ovrs]
            named = [o for o in inner if _is_named_node(o)]
            mapping = dict(
                zip(named, translate_node_overrides(named, pipeline.get("nodes"), "pipeline."), strict=True)
            )
            data = run([*plain, *(_add_prefix(mapping.get(o, o), "pipeline") for o in inner)])
    elif isinstance(pipeline, str):
        ref_file = _find_pipeline_ref(pipeline, file, search_paths, roots)
        inner = [_strip_prefix(o, "pipeline") or o for o in pipeline_ovrs]
        data["pipeline"] = _compose_content(
            "pipeline",
            ref_file.parent,
            ref_file.stem,
            ref_file,
            inner,
            f"pipeline {pipeline!r} (referenced by {name})",
        )
    elif pipeline_ovrs:
        raise InvalidArgument(
            f"overrides: {pipeline_ovrs[0]!r} targets the pipeline, but {name!r} has none", field="overrides"
        )
    return data


def _strip_prefix(override: str, prefix: str) -> str | None:
    """``override`` without the leading ``prefix.`` of its key, or None when the key lacks it."""
    mods, key, rest = _split(override)
    if key.startswith(prefix + "."):
        return f"{mods}{key[len(prefix) + 1 :]}{rest}"
    return None


def _add_prefix(override: str, prefix: str) -> str:
    mods, key, rest = _split(override)
    return f"{mods}{prefix}.{key}{rest}"


def _find_pipeline_ref(
    ref: str, trainrun_file: Path, search_paths: Sequence[Path], roots: Sequence[Path]
) -> Path:
    """The pipeline file a trainrun's ``pipeline: <path>`` names (relative to the trainrun file first)."""
    if not ref.strip():
        raise InvalidArgument("pipeline: empty pipeline reference", field="pipeline")
    bounds.check_path(ref.strip(), "pipeline")
    with bounds.client_path("pipeline", ref):
        return _find_pipeline_file(ref, trainrun_file, search_paths, roots)


def _find_pipeline_file(
    ref: str, trainrun_file: Path, search_paths: Sequence[Path], roots: Sequence[Path]
) -> Path:
    allowed = [*search_paths, *roots]
    wanted = _with_suffix(ref.strip(), "pipeline")
    if wanted.is_absolute():
        candidates = [wanted]
    else:
        here = trainrun_file.parent
        candidates = [here / wanted, here.parent / wanted]
        for base in search_paths:
            candidates += [Path(base) / wanted, Path(base) / "pipeline" / wanted]
    # upstream's last resort: the <stem>_pipeline.yaml that SaveTrainRun writes next to the trainrun
    candidates.append(trainrun_file.with_name(f"{trainrun_file.stem}_pipeline.yaml"))
    for cand in candidates:
        if cand.is_file():
            real = cand.resolve()
            if not _inside(real, allowed):
                raise PermissionDenied(
                    f"pipeline: {bounds.shown(ref)} lies outside the allowed roots", field="pipeline"
                )
            return real
    raise NotFound(
        f"pipeline: the referenced pipeline {bounds.shown(ref)} was not found "
        f"(looked next to {trainrun_file.name} and in the search paths)",
        field="pipeline",
    )


def parse_payload(payload: bytes | str | Mapping[str, Any] | None, field: str) -> dict[str, Any]:
    """A config a client sent: JSON (or YAML) bytes / text / dict -> dict; InvalidArgument naming
    ``field`` when it is empty, not UTF-8, malformed, not an object, or over the limits of
    :mod:`.bounds` (size, nesting, number of values)."""
    if payload is None:
        raise InvalidArgument(f"{field}: the config is empty", field=field)
    data: Any
    if isinstance(payload, Mapping):
        data = dict(payload)
        bounds.check_tree(data, field)
    else:
        text = bounds.document_text(payload, field)
        if not text.strip():
            raise InvalidArgument(f"{field}: the config is empty", field=field)
        data = bounds.parse_document(text, field)
    if not isinstance(data, dict):
        raise InvalidArgument(f"{field}: expected a JSON object, got {type(data).__name__}", field=field)
    if not data:
        raise InvalidArgument(f"{field}: the config is empty", field=field)
    return data
