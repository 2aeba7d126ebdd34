"""After fit: restore the best checkpoint and evaluate the val and test splits.

Both produce a boundary value the worker turns into a TrainEvent detail: :func:`restore_best` a
:class:`~cuvis_cluster.engine.types.CheckpointRestore` (``checkpoint_restored``), :func:`evaluate_split` an
:class:`~cuvis_cluster.engine.types.EvaluationOutcome` (``evaluation_start``/``_progress``/``_end``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from cuvis_cluster.engine.nodes.base import Stage
from cuvis_cluster.engine.training.lightning_module import PipelineModule
from cuvis_cluster.engine.training.run import RunCancelled, TrainContext
from cuvis_cluster.engine.types import CheckpointRestore, EvaluationOutcome, ProgressEvent
from cuvis_cluster.errors import CuvisError


def _weighted_means(sums: dict[str, float], weights: dict[str, int]) -> dict[str, float]:
    return {k: sums[k] / max(weights[k], 1) for k in sums}


def evaluate_split(
    ctx: TrainContext,
    module: PipelineModule,
    loader: Iterable[Mapping[str, Any]] | None,
    split: str,
    emit: Callable[[ProgressEvent], None] | None = None,
    epoch: int = 0,
    global_step: int = 0,
) -> EvaluationOutcome:
    """Run the pipeline on a split without gradients; the outcome is also emitted as hook events."""
    emit = emit or ctx.emit
    stage = Stage.VAL if split == "val" else Stage.TEST
    frames_total = len(loader.dataset) if loader is not None and hasattr(loader, "dataset") else 0

    def _end(outcome: EvaluationOutcome, **extra: Any) -> EvaluationOutcome:
        emit(
            ProgressEvent(
                status="running",
                stage=split,
                epoch=epoch,
                global_step=global_step,
                hook="evaluation_end",
                split=split,
                evaluation=outcome,
                **extra,
            )
        )
        return outcome

    if loader is None or frames_total == 0:
        outcome = EvaluationOutcome(split=split, status="no_split", frames=0)
        return _end(outcome, message=f"no {split} split to evaluate")
    emit(
        ProgressEvent(
            status="running",
            stage=split,
            epoch=epoch,
            global_step=global_step,
            hook="evaluation_start",
            split=split,
            progress=(0, frames_total),
        )
    )
    pipeline = module.pipeline
    was_training = pipeline.training
    pipeline.eval()
    sums: dict[str, float] = {}
    weights: dict[str, int] = {}
    done = 0
    try:
        with torch.no_grad():
            for batch_idx, batch in enumerate(loader):
                ctx.check_cancelled()
                total, losses, metrics, bs = module.run_stage(batch, stage)
                values = {f"{split}/{n}": v for n, v in losses.items()}
                if total is not None:
                    values[f"{split}_loss"] = total
                values.update(metrics)
                floats = {k: float(v) for k, v in values.items()}
                for key, value in floats.items():
                    sums[key] = sums.get(key, 0.0) + value * bs
                    weights[key] = weights.get(key, 0) + bs
                done += bs
                emit(
                    ProgressEvent(
                        status="running",
                        stage=split,
                        epoch=epoch,
                        batch_idx=batch_idx,
                        global_step=global_step,
                        hook="evaluation_progress",
                        split=split,
                        progress=(min(done, frames_total), frames_total),
                        metrics=floats,
                    )
                )
    except RunCancelled:
        raise
    except CuvisError as exc:
        outcome = EvaluationOutcome(split=split, status="failed", frames=done, error=exc.message)
        return _end(outcome, message=exc.message)
    finally:
        pipeline.train(was_training)
    metrics = _weighted_means(sums, weights)
    outcome = EvaluationOutcome(split=split, status="evaluated", frames=done, metrics=metrics)
    return _end(outcome, metrics=metrics, progress=(done, frames_total))


def restore_best(
    module: PipelineModule, checkpoint: ModelCheckpoint | None, trainer: pl.Trainer
) -> CheckpointRestore | None:
    """Load the best checkpoint of a monitored ``ModelCheckpoint`` into the module; None without one."""
    if checkpoint is None:
        return None
    monitor = checkpoint.monitor or ""
    if not monitor:
        return CheckpointRestore(
            restored=False,
            path=checkpoint.last_model_path or "",
            epoch=trainer.current_epoch,
            monitor="",
            reason="no monitor configured: the final weights are kept",
        )
    path = checkpoint.best_model_path
    if not path or not Path(path).is_file():
        return CheckpointRestore(
            restored=False,
            path="",
            epoch=trainer.current_epoch,
            monitor=monitor,
            reason=f"no checkpoint was saved for {monitor}",
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    module.load_state_dict(state["state_dict"], strict=True)
    score = checkpoint.best_model_score
    return CheckpointRestore(
        restored=True,
        path=str(path),
        epoch=int(state.get("epoch", trainer.current_epoch)),
        monitor=monitor,
        score=None if score is None else float(score),
        reason=f"best {monitor} ({checkpoint.mode})",
    )
