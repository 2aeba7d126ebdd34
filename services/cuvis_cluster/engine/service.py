"""The dataplane facade: one method per RPC of ``cuvis_ai.v1.CuvisAIService`` (see ENGINE_API.md).

Protocol-free: plain Python and torch types in and out, only :mod:`cuvis_cluster.errors` raised for
problems a user can cause. The gRPC servicer decodes a request, calls one method here and encodes the
result.

Server-side paths are confined: configs are looked up in the session's search paths (which must lie
inside the allowed roots: ``configs_dir``, ``data_dir``, ``output_dir`` and ``extra_roots``), files are
written under ``output_dir`` only, and data is read under ``data_dir``/``extra_roots``. Symlinks are
resolved before every check.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from cuvis_cluster.engine import configs as config_resolver
from cuvis_cluster.engine import schemas
from cuvis_cluster.engine.nodes.base import TORCH_DTYPES, NodeRegistry, Stage
from cuvis_cluster.engine.pipeline import Pipeline, dtype_name, read_weights
from cuvis_cluster.engine.pipeline import save_weights as weights_bytes
from cuvis_cluster.engine.sessions import Session, SessionManager
from cuvis_cluster.engine.training.run import TrainContext, TrainRun, load_trainer
from cuvis_cluster.engine.types import EngineConfig, ProgressEvent, TensorSpecInfo
from cuvis_cluster.errors import (
    CuvisError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unimplemented,
)

__all__ = ["Engine", "EngineConfig", "ProgressEvent", "TensorSpecInfo", "TrainRun"]

log = logging.getLogger(__name__)

TRAINER_TYPES = ("statistical", "gradient", "calibration")
METADATA_FIELDS = ("name", "description", "created", "tags", "author", "cuvis_ai_version")


def pick_device(setting: str) -> torch.device:
    choice = (setting or "auto").strip().lower()
    if choice == "cpu":
        return torch.device("cpu")
    if choice == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device=cuda was requested but CUDA is not available on this machine")
        return torch.device("cuda")
    if choice != "auto":
        raise ValueError(f"unknown device setting {setting!r}; use auto, cpu or cuda")
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _inside(real: Path, dirs: Iterable[Path]) -> bool:
    return any(real == d or real.is_relative_to(d) for d in dirs)


def _path_text(path: str | None, field: str) -> str:
    """A user-given path, stripped; InvalidArgument naming ``field`` when empty or containing NUL."""
    text = (path or "").strip()
    if not text:
        raise InvalidArgument(f"{field}: a path is required", field=field)
    if "\x00" in text:
        raise InvalidArgument(f"{field}: contains a NUL byte", field=field)
    return text


def _parse_payload(payload: bytes | str | Mapping[str, Any] | None, field: str) -> dict[str, Any]:
    """JSON (or YAML) bytes / text / dict -> dict; InvalidArgument when empty or malformed."""
    if payload is None:
        raise InvalidArgument(f"{field}: the config is empty", field=field)
    if isinstance(payload, Mapping):
        data: Any = dict(payload)
    else:
        if isinstance(payload, bytes | bytearray | memoryview):
            try:
                text = bytes(payload).decode("utf-8", errors="strict")
            except UnicodeDecodeError as exc:
                raise InvalidArgument(
                    f"{field}: not UTF-8 text (invalid byte at offset {exc.start}); send JSON or YAML",
                    field=field,
                ) from None
        else:
            text = str(payload)
        if not text.strip():
            raise InvalidArgument(f"{field}: the config is empty", field=field)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as json_exc:
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError:
                raise InvalidArgument(f"{field}: not valid JSON: {json_exc}", field=field) from None
            if not isinstance(data, dict):
                raise InvalidArgument(f"{field}: not valid JSON: {json_exc}", field=field) from None
    if not isinstance(data, dict):
        raise InvalidArgument(f"{field}: expected a JSON object, got {type(data).__name__}", field=field)
    if not data:
        raise InvalidArgument(f"{field}: the config is empty", field=field)
    return data


def _umask() -> int:
    # os.umask can only be read by setting it; done under a lock so no other thread sees the 0 in between.
    with _UMASK_LOCK:
        mask = os.umask(0)
        os.umask(mask)
    return mask


_UMASK_LOCK = threading.Lock()


def _atomic_write(path: Path, data: bytes) -> None:
    """Write via a temp file and rename; the file gets ``0o666 & ~umask`` like a plain ``open`` would
    (mkstemp creates 0600, which other readers of a shared volume cannot open)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _yaml_bytes(data: Any) -> bytes:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True).encode("utf-8")


def _metadata_of(raw: Any) -> dict[str, Any]:
    meta = raw.get("metadata") if isinstance(raw, Mapping) else None
    try:
        model = schemas.PipelineMetadata.model_validate(meta or {})
    except Exception:
        model = schemas.PipelineMetadata()
    return {k: v for k, v in model.model_dump(mode="json").items() if k in METADATA_FIELDS}


class Engine:
    """See the module docstring and ENGINE_API.md."""

    def __init__(self, config: EngineConfig) -> None:
        import cuvis_cluster.engine.nodes  # noqa: F401  (registers the built-in node catalogue)

        self.config = config
        self.configs_dir = Path(config.configs_dir).expanduser().resolve()
        self.data_dir = Path(config.data_dir).expanduser().resolve()
        self.output_dir = Path(config.output_dir).expanduser().resolve()
        self.extra_roots = [Path(p).expanduser().resolve() for p in config.extra_roots]
        self.plugin_dirs = [Path(p).expanduser().resolve() for p in config.plugin_dirs]
        self.device = pick_device(config.device)
        self.sessions = SessionManager(
            max_sessions=config.max_sessions,
            idle_timeout_seconds=config.idle_timeout_seconds,
            reap_interval_seconds=getattr(config, "reap_interval_seconds", 30.0),
            default_search_paths=self.default_search_paths,
        )
        self._plugins: Any = None

    # ----------------------------------------------------------------------------------------------
    # lifecycle and roots
    # ----------------------------------------------------------------------------------------------
    def start(self) -> None:
        self.sessions.start()

    def cancel_all_training(self, reason: str) -> int:
        """Cancel every running train run (worker shutdown); returns how many were running."""
        runs = [s.train_run for s in self.sessions.list() if s.train_run is not None and not s.train_run.done]
        for run in runs:
            run.cancel(reason)
        return len(runs)

    def shutdown(self) -> None:
        self.sessions.set_draining(True)
        self.sessions.stop()
        self.sessions.close_all()

    @property
    def allowed_roots(self) -> list[Path]:
        """Directories that config search paths and server-side files may lie in."""
        roots = [self.configs_dir, self.data_dir, self.output_dir, *self.extra_roots]
        return list(dict.fromkeys(roots))

    def default_search_paths(self) -> list[Path]:
        return [self.configs_dir]

    def session(self, session_id: str, owner: str | None = None) -> Session:
        return self.sessions.get(session_id, owner)

    def _session_paths(self, session_id: str | None) -> list[Path]:
        if not session_id:
            return self.default_search_paths()
        return list(self.session(session_id).search_paths)

    def _registry(self, session_id: str | None) -> NodeRegistry:
        return self.session(session_id).registry if session_id else NodeRegistry()

    def data_roots(self) -> Any:
        from cuvis_cluster.engine.data.paths import DataRoots

        return DataRoots([self.data_dir, *self.extra_roots])

    def build_datamodule(self, data_config: Mapping[str, Any] | None) -> Any:
        """The data module for a DataConfig (JSON form), confined to the data roots."""
        if not data_config:
            raise InvalidArgument("data: no data config", field="data")
        try:
            from cuvis_cluster.engine.data.base import build_datamodule
        except ImportError as exc:  # pragma: no cover - the data package ships with the engine
            raise Unimplemented(f"data modules are not available on this worker: {exc}") from None
        return build_datamodule(dict(data_config), self.data_roots())

    def _output_file(self, path: str, field: str, suffixes: tuple[str, ...] = (".yaml", ".yml")) -> Path:
        """A writable path under output_dir for ``path`` (relative to it, or absolute inside it)."""
        text = _path_text(path, field)
        p = Path(text).expanduser()
        if text.endswith(("/", os.sep)) or p.name in ("", ".", ".."):
            raise InvalidArgument(f"{field}: {text!r} does not name a file", field=field)
        given = p if p.is_absolute() else self.output_dir / p
        if given.is_dir():
            raise InvalidArgument(f"{field}: {text!r} is a directory", field=field)
        if p.suffix not in suffixes:
            if p.suffix and p.suffix != ".pt":
                raise InvalidArgument(
                    f"{field}: {text!r} must end in {' or '.join(suffixes)} (or have no suffix)", field=field
                )
            p = p.with_suffix(suffixes[0]) if p.suffix == ".pt" else p.with_name(p.name + suffixes[0])
        target = p if p.is_absolute() else self.output_dir / p
        real = target.resolve()
        if not _inside(real, [self.output_dir]):
            raise PermissionDenied(
                f"{field}: {text!r} lies outside the output root {self.output_dir}; "
                "use a path relative to it",
                field=field,
            )
        if real.exists() and real.is_dir():
            raise InvalidArgument(f"{field}: {text!r} is a directory", field=field)
        return real

    def _find_file(self, text: str, bases: Iterable[Path], field: str, suffix: str) -> Path:
        """An existing file for ``text`` (relative: first base that has it), confined to the roots."""
        text = _path_text(text, field)
        p = Path(text).expanduser()
        if not p.suffix:
            p = p.with_name(p.name + suffix)
        bases = [Path(b) for b in bases]
        allowed = [b.resolve() for b in [*bases, *self.allowed_roots]]
        candidates = [p] if p.is_absolute() else [b / p for b in bases]
        for cand in candidates:
            real = cand.resolve()
            if not _inside(real, allowed):
                raise PermissionDenied(f"{field}: {text!r} lies outside the allowed roots", field=field)
            if real.is_file():
                return real
        raise NotFound(f"{field}: {text!r} not found", field=field)

    # ----------------------------------------------------------------------------------------------
    # sessions
    # ----------------------------------------------------------------------------------------------
    def create_session(self, owner: str | None = None) -> str:
        return self.sessions.create(owner).id

    def close_session(self, session_id: str, owner: str | None = None) -> None:
        self.sessions.close(session_id, owner)

    def set_search_paths(
        self, session_id: str, paths: list[str], append: bool
    ) -> tuple[list[str], list[str]]:
        session = self.session(session_id)
        roots = self.allowed_roots
        accepted: list[Path] = []
        rejected: list[str] = []
        for raw in paths:
            text = str(raw or "").strip()
            if not text or "\x00" in text:
                rejected.append(str(raw))
                continue
            p = Path(text).expanduser()
            options = [p] if p.is_absolute() else [r / p for r in roots]
            chosen = None
            for option in options:
                try:
                    real = option.resolve()
                except (OSError, RuntimeError):
                    continue
                if real.is_dir() and _inside(real, roots):
                    chosen = real
                    break
            if chosen is None:
                rejected.append(text)
            else:
                accepted.append(chosen)
        current = [*session.search_paths, *accepted] if append else accepted
        current = list(dict.fromkeys(current))
        if not current:
            # Every path was rejected on a replace: keep the bundled configs rather than nothing.
            current = self.default_search_paths()
        session.search_paths = current
        session.touch()
        return [str(p) for p in current], rejected

    # ----------------------------------------------------------------------------------------------
    # configs
    # ----------------------------------------------------------------------------------------------
    def resolve_config(
        self, session_id: str | None, config_type: str, path: str, overrides: list[str] | None = None
    ) -> dict[str, Any]:
        search = self._session_paths(session_id)
        return config_resolver.resolve(config_type, path, list(overrides or []), search, self.allowed_roots)

    def parameter_schema(self, config_type: str) -> dict[str, Any]:
        return schemas.json_schema(config_type)

    def validate_config(
        self, config_type: str, payload: bytes | str | Mapping[str, Any]
    ) -> tuple[bool, list[str], list[str]]:
        kind = (config_type or "").strip().lower()
        if kind not in schemas.CONFIG_MODELS:
            raise InvalidArgument(
                f"config_type: unknown config type {config_type!r}; "
                f"known: {', '.join(schemas.CONFIG_MODELS)}",
                field="config_type",
            )
        try:
            data = _parse_payload(payload, "config")
            model = schemas.validate(kind, data)
        except InvalidArgument as exc:
            return False, [p.strip() for p in exc.message.split("; ") if p.strip()], []
        errors: list[str] = []
        warnings: list[str] = []
        pipeline_cfg = None
        if isinstance(model, schemas.PipelineConfig):
            pipeline_cfg = model
        elif isinstance(model, schemas.TrainRunConfig):
            if isinstance(model.pipeline, schemas.PipelineConfig):
                pipeline_cfg = model.pipeline
            elif isinstance(model.pipeline, str):
                warnings.append(
                    "pipeline: a path reference; ResolveConfig inlines it, SetTrainRunConfig resolves it"
                )
            else:
                warnings.append("pipeline: none given; SetTrainRunConfig needs a pipeline already loaded")
            if model.data is None:
                warnings.append("data: none given; Train needs a data config")
            if model.training is not None and not model.loss_nodes:
                warnings.append("loss_nodes: empty; gradient training needs at least one loss node")
        if pipeline_cfg is not None:
            prefix = "pipeline: " if kind == "trainrun" else ""
            try:
                built = Pipeline.from_config(pipeline_cfg, NodeRegistry())
                if isinstance(model, schemas.TrainRunConfig):
                    for field in ("loss_nodes", "metric_nodes", "freeze_nodes", "unfreeze_nodes"):
                        try:
                            built.resolve_names(getattr(model, field), field)
                        except InvalidArgument as exc:
                            errors.append(exc.message)
            except CuvisError as exc:
                errors.append(prefix + exc.message)
        return not errors, errors, warnings

    # ----------------------------------------------------------------------------------------------
    # pipelines
    # ----------------------------------------------------------------------------------------------
    def _build_pipeline(self, session: Session, config: Any) -> Pipeline:
        pipeline = Pipeline.from_config(config, session.registry)
        pipeline.to_device(self.device)
        pipeline.eval()
        return pipeline

    def _install_pipeline(self, session: Session, pipeline: Pipeline) -> None:
        """Make ``pipeline`` the session's (caller holds the write lock)."""
        profiler = session.extras.get("profiler")
        if profiler is not None:
            pipeline.profiler = profiler
        session.pipeline = pipeline

    def _require_pipeline(self, session: Session) -> Pipeline:
        pipeline = session.pipeline
        if pipeline is None:
            raise FailedPrecondition(
                f"no pipeline is loaded in session {session.id}; call LoadPipeline "
                "(or SetTrainRunConfig with a pipeline) first"
            )
        return pipeline

    def load_pipeline(self, session_id: str, config: bytes | str | Mapping[str, Any]) -> dict[str, Any]:
        session = self.session(session_id)
        session._refuse_if_training("LoadPipeline")
        data = _parse_payload(config, "config")
        pipeline = self._build_pipeline(session, data)
        with session.mutating("LoadPipeline"):
            self._install_pipeline(session, pipeline)
        return {k: pipeline.metadata.get(k, [] if k == "tags" else "") for k in METADATA_FIELDS}

    def load_weights(self, session_id: str, path: str | None, data: bytes | None, strict: bool = True) -> str:
        session = self.session(session_id)
        session._refuse_if_training("LoadPipelineWeights")
        if path and data:
            raise InvalidArgument(
                "weights_source: give weights_path or weights_bytes, not both", field="weights_source"
            )
        if not path and not data:
            raise InvalidArgument(
                "weights_source: weights_path or weights_bytes is required", field="weights_source"
            )
        self._require_pipeline(session)
        resolved = ""
        if path:
            file = self._find_file(path, [*session.search_paths, self.output_dir], "weights_path", ".pt")
            payload = read_weights(file.read_bytes(), "weights_path")
            resolved = str(file)
        else:
            payload = read_weights(bytes(data or b""), "weights_bytes")
        with session.mutating("LoadPipelineWeights"):
            pipeline = self._require_pipeline(session)
            pipeline.load_weights_payload(payload, strict=bool(strict))
        return resolved

    def save_pipeline(
        self, session_id: str, path: str, metadata: Mapping[str, Any] | None = None
    ) -> tuple[str, str]:
        session = self.session(session_id)
        yaml_path = self._output_file(path, "pipeline_path")
        pt_path = yaml_path.with_suffix(".pt")
        with session.reading():
            session._refuse_if_training("SavePipeline")
            pipeline = self._require_pipeline(session)
            meta = dict(pipeline.metadata)
            for key, value in (metadata or {}).items():
                if value not in (None, "", [], {}):
                    meta[key] = list(value) if key == "tags" else value
            if not meta.get("created"):
                meta["created"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
            if not meta.get("name"):
                meta["name"] = yaml_path.stem
            pipeline.metadata = meta
            config = pipeline.to_config()
            weights = weights_bytes(pipeline.weights_payload())
        _atomic_write(yaml_path, _yaml_bytes(config))
        _atomic_write(pt_path, weights)
        return str(yaml_path), str(pt_path)

    def pipeline_inputs(self, session_id: str) -> list[TensorSpecInfo]:
        session = self.session(session_id)
        with session.reading():
            return self._require_pipeline(session).input_specs()

    def pipeline_outputs(self, session_id: str) -> list[TensorSpecInfo]:
        session = self.session(session_id)
        with session.reading():
            return self._require_pipeline(session).output_specs()

    def _pipeline_root(self) -> Path:
        return self.configs_dir / "pipeline"

    def _pipeline_entry(self, root: Path, file: Path) -> dict[str, Any] | None:
        try:
            raw = yaml.safe_load(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            log.warning("skipping unreadable pipeline config %s", file)
            return None
        if not isinstance(raw, Mapping) or "nodes" not in raw:
            return None
        weights = file.with_suffix(".pt")
        return {
            "pipeline_path": file.relative_to(root).as_posix(),
            "resolved_path": str(file),
            "metadata": _metadata_of(raw),
            "weights_path": str(weights) if weights.is_file() else "",
        }

    def list_pipelines(self, filter_tag: str | None = None) -> list[dict[str, Any]]:
        root = self._pipeline_root()
        if not root.is_dir():
            return []
        real_root = root.resolve()
        tag = (filter_tag or "").strip().lower()
        out = []
        for file in sorted(root.rglob("*.yaml")):
            if not _inside(file.resolve(), [real_root]) or not file.is_file():
                continue
            entry = self._pipeline_entry(root, file)
            if entry is None:
                continue
            if tag and tag not in (str(t).lower() for t in entry["metadata"].get("tags", [])):
                continue
            out.append(entry)
        return out

    def pipeline_info(self, pipeline_path: str) -> dict[str, Any]:
        text = (pipeline_path or "").strip()
        field = "pipeline_path"
        if not text:
            raise InvalidArgument(
                f"{field}: a path relative to the pipeline configs is required", field=field
            )
        p = Path(text)
        if p.is_absolute() or "\\" in text or text.startswith("~"):
            raise InvalidArgument(f"{field}: {text!r} must be a relative '/'-separated path", field=field)
        if any(part in ("..", ".") for part in p.parts):
            raise InvalidArgument(f"{field}: {text!r} must not contain '.' or '..' components", field=field)
        if p.suffix not in (".yaml", ".yml"):
            raise InvalidArgument(f"{field}: {text!r} must name a .yaml file", field=field)
        root = self._pipeline_root()
        candidates = [root / p]
        if p.parts[0] == "pipeline" and len(p.parts) > 1:
            candidates.append(root / Path(*p.parts[1:]))
        real_root = root.resolve()
        for cand in candidates:
            real = cand.resolve()
            if not _inside(real, [real_root]):
                raise InvalidArgument(f"{field}: {text!r} escapes the pipeline configs root", field=field)
            if real.is_file():
                entry = self._pipeline_entry(root, cand)
                if entry is None:
                    raise InvalidArgument(f"{field}: {text!r} is not a pipeline config", field=field)
                entry["yaml_content"] = real.read_text(encoding="utf-8")
                return entry
        raise NotFound(f"{field}: pipeline {text!r} not found", field=field)

    def visualize(
        self, session_id: str | None, fmt: str, config_content: str | bytes | None = None
    ) -> tuple[bytes, str]:
        try:
            from cuvis_cluster.engine import visualize as viz
        except ImportError as exc:
            raise Unimplemented(f"pipeline visualization is not available: {exc}") from None
        if config_content:
            return viz.visualize_content(config_content, fmt)
        if not session_id:
            raise InvalidArgument("session_id or config_content is required", field="session_id")
        session = self.session(session_id)
        with session.reading():
            pipeline = self._require_pipeline(session)
            return viz.visualize_pipeline(pipeline, fmt)

    # ----------------------------------------------------------------------------------------------
    # training
    # ----------------------------------------------------------------------------------------------
    def _pipeline_from_reference(self, session: Session, ref: str) -> Pipeline:
        data = config_resolver.resolve("pipeline", ref, [], session.search_paths, self.allowed_roots)
        return self._build_pipeline(session, data)

    def set_trainrun(self, session_id: str, config: bytes | str | Mapping[str, Any]) -> bool:
        session = self.session(session_id)
        session._refuse_if_training("SetTrainRunConfig")
        data = _parse_payload(config, "config")
        model = schemas.validate("trainrun", data)
        assert isinstance(model, schemas.TrainRunConfig)
        pipeline: Pipeline | None = None
        if isinstance(model.pipeline, schemas.PipelineConfig):
            pipeline = self._build_pipeline(session, model.pipeline)
        elif isinstance(model.pipeline, str):
            pipeline = self._pipeline_from_reference(session, model.pipeline)
        elif session.pipeline is None:
            raise FailedPrecondition(
                "the train-run config has no pipeline and none is loaded in the session; "
                "LoadPipeline first or include `pipeline` in the config"
            )
        with session.mutating("SetTrainRunConfig"):
            if pipeline is not None:
                self._install_pipeline(session, pipeline)
            stored = schemas.dump(model)
            if pipeline is not None:
                stored["pipeline"] = pipeline.to_config()
            session.trainrun = stored
            session.data_config = stored.get("data")
            session.training_config = stored.get("training")
        return pipeline is not None

    def _coerce_section(self, value: Any, kind: str) -> dict[str, Any] | None:
        if value is None:
            return None
        if isinstance(value, bytes | bytearray | str):
            if not (value.strip() if isinstance(value, str) else bytes(value).strip()):
                return None
            value = _parse_payload(value, kind)
        if isinstance(value, Mapping) and not value:
            return None
        return schemas.dump(schemas.validate(kind, dict(value), prefix=kind))

    def train(
        self,
        session_id: str,
        trainer_type: str,
        data: Mapping[str, Any] | bytes | str | None = None,
        training: Mapping[str, Any] | bytes | str | None = None,
    ) -> TrainRun:
        session = self.session(session_id)
        kind = (trainer_type or "").strip().lower().removeprefix("trainer_type_")
        if kind not in TRAINER_TYPES:
            raise InvalidArgument(
                f"trainer_type: {trainer_type!r} is not a trainer type; "
                f"use one of {', '.join(TRAINER_TYPES)}",
                field="trainer_type",
            )
        session._refuse_if_training("Train")
        self._require_pipeline(session)
        data_override = self._coerce_section(data, "data")
        training_override = self._coerce_section(training, "training")
        if not (data_override or session.data_config):
            raise InvalidArgument(
                "data: no data config; set one with SetTrainRunConfig (the trainrun's `data`) "
                "or send it with Train",
                field="data",
            )
        trainer = load_trainer(kind)
        with session.lock.write():
            session.begin_training()
            # Captured only now, under the write lock and with the flag held: a LoadPipeline or
            # SetTrainRunConfig that raced with this call either finished before or is refused after.
            pipeline = session.pipeline
            data_cfg = data_override or session.data_config
            training_cfg = training_override or session.training_config
            trainrun = session.trainrun
        try:
            if pipeline is None:  # unloaded between the check above and the flag
                raise FailedPrecondition(f"no pipeline is loaded in session {session.id}; call LoadPipeline")
            if not data_cfg:
                raise InvalidArgument("data: no data config; send it with Train", field="data")
            ctx = TrainContext(
                trainer_type=kind,
                session=session,
                pipeline=pipeline,
                data=data_cfg,
                training=training_cfg,
                trainrun=trainrun,
                device=self.device,
                engine=self,
            )

            def on_event(event: ProgressEvent) -> None:
                session.last_event = event
                session.touch()

            run = TrainRun(trainer, ctx, on_event=on_event, on_finish=session.end_training)
            session.train_run = run
            run.start()
        except BaseException:
            session.end_training()
            raise
        return run

    def stop_train(self, session_id: str, wait_seconds: float = 10.0) -> tuple[bool, str]:
        session = self.session(session_id)
        run = session.train_run
        if run is None or run.done:
            return False, "no training is running in this session"
        run.cancel("stopped by StopTrain")
        if run.join(wait_seconds):
            return True, "training cancelled"
        return True, "cancellation requested; the run stops at its next batch"

    def train_status(self, session_id: str) -> ProgressEvent | None:
        return self.session(session_id).last_event

    def training_capabilities(self) -> dict[str, Any]:
        try:
            from cuvis_cluster.engine.training.registry import capabilities
        except ImportError:
            return {
                "optimizers": list(schemas.OPTIMIZERS),
                "schedulers": list(schemas.SCHEDULERS),
                "callbacks": [],
                "optimizer_params": [],
                "scheduler_params": [],
            }
        return capabilities()

    # ----------------------------------------------------------------------------------------------
    # train runs
    # ----------------------------------------------------------------------------------------------
    def save_trainrun(self, session_id: str, path: str, save_weights: bool = False) -> tuple[str, str, str]:
        session = self.session(session_id)
        trainrun_path = self._output_file(path, "trainrun_path")
        stem = trainrun_path.stem
        pipeline_path = trainrun_path.with_name(f"{stem}_pipeline.yaml")
        weights_path = trainrun_path.with_suffix(".pt")
        with session.reading():
            session._refuse_if_training("SaveTrainRun")
            pipeline = self._require_pipeline(session)
            trainrun = dict(session.trainrun or {})
            trainrun.setdefault("name", stem)
            if not trainrun.get("name"):
                trainrun["name"] = stem
            trainrun["pipeline"] = pipeline_path.name
            pipeline_yaml = _yaml_bytes(pipeline.to_config())
            trainrun = schemas.dump(schemas.validate("trainrun", trainrun))
            trainrun_yaml = _yaml_bytes(trainrun)
            weights = weights_bytes(pipeline.weights_payload()) if save_weights else None
        _atomic_write(pipeline_path, pipeline_yaml)
        _atomic_write(trainrun_path, trainrun_yaml)
        if weights is not None:
            _atomic_write(weights_path, weights)
        return str(trainrun_path), str(pipeline_path), str(weights_path) if weights is not None else ""

    def restore_trainrun(
        self,
        path: str,
        weights_path: str | None = None,
        strict: bool = True,
        session_id: str | None = None,
        owner: str | None = None,
    ) -> tuple[str, dict[str, Any]]:
        existing = self.session(session_id, owner) if session_id else None
        search = list(existing.search_paths) if existing else self.default_search_paths()
        bases = [self.output_dir, *search, self.configs_dir / "trainrun"]
        file = self._find_file(path, bases, "trainrun_path", ".yaml")
        resolved = config_resolver.resolve(
            "trainrun", str(file), [], [file.parent, *search], self.allowed_roots
        )
        if resolved.get("pipeline") is None:
            sibling = file.with_name(f"{file.stem}_pipeline.yaml")
            if not sibling.is_file():
                raise InvalidArgument(
                    f"trainrun_path: {path!r} names no pipeline and there is no {sibling.name} next to it",
                    field="trainrun_path",
                )
            resolved["pipeline"] = config_resolver.resolve(
                "pipeline", str(sibling), [], [file.parent], self.allowed_roots
            )
        payload = None
        if weights_path:
            wfile = self._find_file(
                weights_path, [file.parent, self.output_dir, *search], "weights_path", ".pt"
            )
            payload = read_weights(wfile.read_bytes(), "weights_path")
        session = existing or self.sessions.create(owner)
        try:
            session._refuse_if_training("RestoreTrainRun")
            pipeline = self._build_pipeline(session, resolved["pipeline"])
            if payload is not None:
                pipeline.load_weights_payload(payload, strict=bool(strict))
            with session.mutating("RestoreTrainRun"):
                self._install_pipeline(session, pipeline)
                session.trainrun = resolved
                session.data_config = resolved.get("data")
                session.training_config = resolved.get("training")
        except BaseException:
            if existing is None:
                self.sessions.close(session.id)
            raise
        return session.id, resolved

    # ----------------------------------------------------------------------------------------------
    # inference
    # ----------------------------------------------------------------------------------------------
    def _check_inputs(self, pipeline: Pipeline, batch: Mapping[str, Any]) -> None:
        for spec in pipeline.input_specs():
            if spec.required and batch.get(spec.name) is None:
                needers = ", ".join(n for n, _ in pipeline.input_ports_for(spec.name))
                raise InvalidArgument(
                    f"inputs.{spec.name}: missing required input (needed by node {needers})",
                    field=f"inputs.{spec.name}",
                )
        required = {spec.name for spec in pipeline.input_specs() if spec.required}
        for key, value in batch.items():
            if not isinstance(value, torch.Tensor):
                continue
            if key in required and value.dim() > 0 and 0 in value.shape:
                raise InvalidArgument(
                    f"inputs.{key}: has an empty dimension (shape {tuple(value.shape)}); every dimension "
                    "must be at least 1",
                    field=f"inputs.{key}",
                )
            if key == "cube" and (value.dtype == torch.bool or value.is_complex()):
                raise InvalidArgument(
                    "inputs.cube: expected a numeric dtype (uint16, float32, ...), "
                    f"got {dtype_name(value.dtype)}",
                    field="inputs.cube",
                )
            ports = pipeline.input_ports_for(key)
            for node_name, port in ports:
                if (
                    port.dtype != "any"
                    and port.dtype in TORCH_DTYPES
                    and TORCH_DTYPES[port.dtype] != value.dtype
                ):
                    raise InvalidArgument(
                        f"inputs.{key}: expected dtype {port.dtype}, got {dtype_name(value.dtype)} "
                        f"(input {key!r} of node {node_name!r})",
                        field=f"inputs.{key}",
                    )
            if not ports:
                continue
            ranks = {len(p.shape) for _, p in ports}
            if len(ranks) == 1 and key == "cube" and value.dim() not in ranks:
                rank = ranks.pop()
                raise InvalidArgument(
                    f"inputs.{key}: expected {rank} dimensions ([B,H,W,C]), got shape {tuple(value.shape)}",
                    field=f"inputs.{key}",
                )
            for dim, (size, where) in pipeline.fixed_sizes(key, value.dim()).items():
                if value.shape[dim] != size:
                    what = (
                        "channels"
                        if dim == value.dim() - 1 and value.dim() >= 3
                        else f"entries in dimension {dim}"
                    )
                    raise InvalidArgument(
                        f"inputs.{key}: expected {size} {what}, got {value.shape[dim]} (required by {where})",
                        field=f"inputs.{key}",
                    )

    def infer(
        self, session_id: str, inputs: Mapping[str, Any], output_filter: list[str] | None = None
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        session = self.session(session_id)
        with session.reading():
            # A running trainer updates buffers in place (statistical init, EMA centres): refuse rather
            # than answer from a half-fitted model.
            session._refuse_if_training("Inference")
            pipeline = self._require_pipeline(session)
        batch = {k: v for k, v in inputs.items() if v is not None}
        self._check_inputs(pipeline, batch)
        wanted = [f.strip() for f in (output_filter or []) if f and f.strip()]
        if wanted:
            names = [s.name for s in pipeline.output_specs()]
            ports = {n.split(".", 1)[1] for n in names}
            unknown = [f for f in wanted if f not in names and f not in ports]
            if unknown:
                raise InvalidArgument(
                    f"output_specs: {', '.join(map(repr, unknown))} match no output; "
                    f"outputs: {', '.join(names)}",
                    field="output_specs",
                )
        try:
            with session.reading(), torch.no_grad():
                session._refuse_if_training("Inference")
                raw = pipeline(batch, Stage.INFERENCE)
        except torch.OutOfMemoryError as exc:
            raise ResourceExhausted(f"inference ran out of memory: {str(exc).splitlines()[0]}") from None
        tensors: dict[str, torch.Tensor] = {}
        metrics: dict[str, float] = {}
        for key, value in raw.items():
            if wanted and key not in wanted and key.split(".", 1)[1] not in wanted:
                continue
            _collect(key, value, tensors, metrics)
        return tensors, metrics

    # ----------------------------------------------------------------------------------------------
    # plugins and profiling (implementations in engine/plugins.py and engine/profiling.py, issue 5)
    # ----------------------------------------------------------------------------------------------
    @property
    def plugins(self) -> Any:
        if self._plugins is None:
            try:
                from cuvis_cluster.engine.plugins import PluginManager
            except ImportError as exc:
                raise Unimplemented(f"plugins are not available on this worker: {exc}") from None
            self._plugins = PluginManager(self.plugin_dirs)
        return self._plugins

    def load_plugin(self, session_id: str, manifest: bytes) -> tuple[str, str]:
        session = self.session(session_id)
        session._refuse_if_training("LoadPlugin")
        return self.plugins.load(session, manifest)

    def list_plugins(self, session_id: str) -> list[dict[str, Any]]:
        return self.plugins.list(self.session(session_id))

    def plugin_info(self, session_id: str, name: str) -> dict[str, Any]:
        return self.plugins.info(self.session(session_id), name)

    def list_nodes(self, session_id: str | None) -> list[dict[str, Any]]:
        session = self.session(session_id) if session_id else None
        return self.plugins.list_nodes(session)

    def clear_plugin_cache(self, plugin_name: str | None = None) -> int:
        return self.plugins.clear_cache(plugin_name or None)

    def _profiler(self, session: Session) -> Any:
        profiler = session.extras.get("profiler")
        if profiler is None:
            try:
                from cuvis_cluster.engine.profiling import Profiler
            except ImportError as exc:
                raise Unimplemented(f"profiling is not available on this worker: {exc}") from None
            profiler = session.extras["profiler"] = Profiler()
        if session.pipeline is not None:
            session.pipeline.profiler = profiler
        return profiler

    def set_profiling(
        self,
        session_id: str,
        enabled: bool,
        synchronize_cuda: bool | None = None,
        reset: bool | None = None,
        skip_first_n: int | None = None,
    ) -> bool:
        session = self.session(session_id)
        self._require_pipeline(session)
        return self._profiler(session).configure(enabled, synchronize_cuda, reset, skip_first_n)

    def profiling_summary(self, session_id: str, stage: str | None = None) -> list[dict[str, Any]]:
        session = self.session(session_id)
        self._require_pipeline(session)
        return self._profiler(session).summary(stage or None)


def _collect(key: str, value: Any, tensors: dict[str, torch.Tensor], metrics: dict[str, float]) -> None:
    """Sort one forward output into tensors (CPU) and scalar metrics."""
    node = key.split(".", 1)[0]
    if isinstance(value, torch.Tensor):
        if value.dim() == 0 and value.dtype != torch.bool:
            metrics[key] = float(value.detach().cpu())
        else:
            tensors[key] = value.detach().cpu().contiguous()
    elif isinstance(value, bool):
        tensors[key] = torch.tensor(value)
    elif isinstance(value, int | float):
        metrics[key] = float(value)
    elif isinstance(value, np.ndarray):
        if value.ndim == 0 and value.dtype != np.bool_:
            metrics[key] = float(value)
        else:
            tensors[key] = torch.from_numpy(np.ascontiguousarray(value))
    elif isinstance(value, Mapping):  # a "metrics" port: {name: 0-d tensor}
        for name, item in value.items():
            if isinstance(item, torch.Tensor) and item.numel() == 1 and item.dtype != torch.bool:
                metrics[f"{node}/{name}"] = float(item.detach().cpu().reshape(()))
            elif isinstance(item, int | float) and not isinstance(item, bool):
                metrics[f"{node}/{name}"] = float(item)
    elif isinstance(value, list | tuple):
        try:
            tensors[key] = torch.as_tensor(value).cpu()
        except (TypeError, ValueError, RuntimeError):
            log.debug("dropping output %s: not convertible to a tensor", key)
