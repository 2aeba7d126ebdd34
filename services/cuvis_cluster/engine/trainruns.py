"""Train runs: a session's train-run config (set, saved, restored) and starting and stopping its training."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from cuvis_cluster.engine import canonical, checkpoints, configs, schemas, session_pipeline
from cuvis_cluster.engine.pipeline import Pipeline
from cuvis_cluster.engine.roots import Roots, atomic_write, yaml_bytes
from cuvis_cluster.engine.sessions import Session, SessionManager
from cuvis_cluster.engine.training.run import TrainContext, TrainRun, load_trainer
from cuvis_cluster.engine.types import JsonObject, ProgressEvent, RestoredTrainRun, SavedTrainRun, StopResult
from cuvis_cluster.engine.weights import read_weights, weights_bytes
from cuvis_cluster.errors import FailedPrecondition, InvalidArgument

TRAINER_TYPES = ("statistical", "gradient", "calibration")


def _install_trainrun(session: Session, trainrun: JsonObject) -> None:
    """Store a validated train-run config and its data/training sections (caller holds the write lock)."""
    session.trainrun = trainrun
    session.data_config = trainrun.get("data")
    session.training_config = trainrun.get("training")


def set_trainrun(
    session: Session, config: bytes | str | Mapping[str, Any], roots: Roots, device: torch.device
) -> bool:
    """SetTrainRunConfig; True when the config brought a pipeline (by reference, or inline: deprecated).

    A ``pipeline`` path (what ResolveConfig returns: ``<output root>/resolved/pipeline-<sha>.yaml``, or
    a path in the session's search paths) is read from inside the allowed roots.
    """
    session.refuse_if_training("SetTrainRunConfig")
    data = configs.parse_payload(config, "config")
    canonical.warn_old_dialect("trainrun", data, "SetTrainRunConfig")
    model = schemas.validate("trainrun", data)
    assert isinstance(model, schemas.TrainRunConfig)
    pipeline: Pipeline | None = None
    if isinstance(model.pipeline, schemas.PipelineConfig):
        pipeline = session_pipeline.build(session, model.pipeline, device)
    elif isinstance(model.pipeline, str):
        pipeline = session_pipeline.build_from_reference(session, model.pipeline, roots, device)
    elif session.pipeline is None:
        raise FailedPrecondition(
            "the train-run config has no pipeline and none is loaded in the session; "
            "LoadPipeline first or include `pipeline` in the config"
        )
    with session.mutating("SetTrainRunConfig"):
        if pipeline is not None:
            session_pipeline.install(session, pipeline)
        stored = schemas.dump(model)
        if pipeline is not None:
            stored["pipeline"] = pipeline.to_config()
        _install_trainrun(session, stored)
    return pipeline is not None


def _coerce_section(value: Mapping[str, Any] | bytes | str | None, kind: str) -> JsonObject | None:
    """A data/training section sent with Train, validated; None when absent or empty."""
    if value is None:
        return None
    if isinstance(value, bytes | bytearray | str):
        if not (value.strip() if isinstance(value, str) else bytes(value).strip()):
            return None
        value = configs.parse_payload(value, kind)
    if not value:
        return None
    return schemas.dump(schemas.validate(kind, dict(value), prefix=kind))


def start(
    session: Session,
    trainer_type: str,
    data: Mapping[str, Any] | bytes | str | None,
    training: Mapping[str, Any] | bytes | str | None,
    roots: Roots,
    device: torch.device,
) -> TrainRun:
    """Train: start a run of ``trainer_type`` in the background; the caller iterates its events."""
    kind = (trainer_type or "").strip().lower().removeprefix("trainer_type_")
    if kind not in TRAINER_TYPES:
        raise InvalidArgument(
            f"trainer_type: {trainer_type!r} is not a trainer type; use one of {', '.join(TRAINER_TYPES)}",
            field="trainer_type",
        )
    session.refuse_if_training("Train")
    session_pipeline.require(session)
    data_override = _coerce_section(data, "data")
    training_override = _coerce_section(training, "training")
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
            device=device,
            resources=roots,
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


def stop(session: Session, wait_seconds: float = 10.0) -> StopResult:
    """StopTrain: cancel the running run and wait up to ``wait_seconds`` for it to end."""
    run = session.train_run
    if run is None or run.done:
        return StopResult(False, "no training is running in this session")
    run.cancel("stopped by StopTrain")
    if run.join(wait_seconds):
        return StopResult(True, "training cancelled")
    return StopResult(True, "cancellation requested; the run stops at its next batch")


def save(session: Session, roots: Roots, path: str, save_weights: bool = False) -> SavedTrainRun:
    """SaveTrainRun: ``<path>.yaml`` naming ``<stem>_pipeline.yaml`` next to it, optionally ``<stem>.pt``."""
    trainrun_path = roots.output_file(path, "trainrun_path")
    stem = trainrun_path.stem
    pipeline_path = roots.sibling(trainrun_path, f"{stem}_pipeline.yaml", "trainrun_path", path)
    weights_path = roots.sibling(trainrun_path, f"{stem}.pt", "trainrun_path", path)
    with session.reading():
        session.refuse_if_training("SaveTrainRun")
        pipeline = session_pipeline.require(session)
        trainrun = dict(session.trainrun or {})
        trainrun.setdefault("name", stem)
        if not trainrun.get("name"):
            trainrun["name"] = stem
        trainrun["pipeline"] = pipeline_path.name
        pipeline_yaml = yaml_bytes(pipeline.to_config())
        model = schemas.validate("trainrun", trainrun)
        assert isinstance(model, schemas.TrainRunConfig)
        # upstream resolves the reference relative to the trainrun file: the pipeline sits next to it
        trainrun_yaml = yaml_bytes(canonical.trainrun(model, pipeline_path.name))
        weights = weights_bytes(pipeline.weights_payload()) if save_weights else None
    atomic_write(pipeline_path, pipeline_yaml)
    atomic_write(trainrun_path, trainrun_yaml)
    if weights is not None:
        atomic_write(weights_path, weights)
    return SavedTrainRun(
        trainrun_path=str(trainrun_path),
        pipeline_path=str(pipeline_path),
        weights_path=str(weights_path) if weights is not None else "",
    )


def _resolve_saved(path: str, roots: Roots, search: list[Path]) -> tuple[Path, JsonObject]:
    """(file, resolved config) for a saved train run; its pipeline is the one it names or the
    ``<stem>_pipeline.yaml`` next to it."""
    bases = [roots.output_dir, *search, roots.configs_dir / "trainrun"]
    file = roots.find_file(path, bases, "trainrun_path", ".yaml")
    resolved = configs.resolve(
        "trainrun", str(file), [], [file.parent, *search], roots.allowed, output_dir=roots.output_dir
    )
    if resolved.get("pipeline") is None:
        sibling = file.with_name(f"{file.stem}_pipeline.yaml")
        if not sibling.is_file():
            raise InvalidArgument(
                f"trainrun_path: {path!r} names no pipeline and there is no {sibling.name} next to it",
                field="trainrun_path",
            )
        resolved["pipeline"] = str(sibling.resolve())
    return file, resolved


def restore(
    sessions: SessionManager,
    roots: Roots,
    device: torch.device,
    path: str,
    weights_path: str | None = None,
    strict: bool = True,
    session_id: str | None = None,
    owner: str | None = None,
) -> RestoredTrainRun:
    """RestoreTrainRun into ``session_id`` or into a new session (closed again if the restore fails)."""
    existing = sessions.get(session_id, owner) if session_id else None
    search = list(existing.search_paths) if existing else roots.default_search_paths()
    file, resolved = _resolve_saved(path, roots, search)
    payload = None
    if weights_path:
        wfile = roots.find_file(weights_path, [file.parent, roots.output_dir, *search], "weights_path", ".pt")
        payload = read_weights(wfile.read_bytes(), "weights_path")
    session = existing or sessions.create(owner)
    try:
        session.refuse_if_training("RestoreTrainRun")
        pipeline = session_pipeline.build_from_reference(session, resolved["pipeline"], roots, device)
        if payload is not None:
            pipeline.load_weights_payload(payload, strict=bool(strict))
            checkpoints.remember(pipeline, checkpoints.source_of(payload, str(wfile)))
        stored = schemas.dump(schemas.validate("trainrun", {**resolved, "pipeline": None}))
        stored["pipeline"] = pipeline.to_config()
        with session.mutating("RestoreTrainRun"):
            session_pipeline.install(session, pipeline)
            _install_trainrun(session, stored)
    except BaseException:
        if existing is None:
            sessions.close(session.id)
        raise
    return RestoredTrainRun(session_id=session.id, config=resolved)
