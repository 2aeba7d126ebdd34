"""Lightning callbacks of the streaming gradient trainer.

:class:`ProgressCallback` turns Lightning's hooks into :class:`~cuvis_cluster.engine.types.ProgressEvent`s
(one RUNNING event per train and validation batch, plus the hook events: fit start, epoch start and end,
validation start/progress/end, fit end) and enforces cancellation: before every train, validation and test
batch it checks the run's cancel flag and, when set, stops the trainer and raises
:class:`~cuvis_cluster.engine.training.run.RunCancelled`, which Lightning propagates out of ``fit`` after
its own teardown. So a StopTrain or a disconnected client ends the run within one batch.

:class:`MemoryLogger` is a Lightning logger that keeps the latest logged values in memory (no files); it
is what ``LearningRateMonitor`` needs, and the progress events read the learning rates from it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers.logger import Logger

from cuvis_cluster.engine.training.run import RunCancelled
from cuvis_cluster.engine.types import ProgressEvent


class MemoryLogger(Logger):
    """Keeps the most recent value of every logged metric; writes nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.latest: dict[str, float] = {}
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        return None

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        with self._lock:
            for key, value in metrics.items():
                if key == "epoch":
                    continue
                try:
                    self.latest[key] = float(value)
                except (TypeError, ValueError):
                    continue

    def learning_rates(self) -> dict[str, float]:
        with self._lock:
            return {k: v for k, v in self.latest.items() if k.startswith("lr-") or k.startswith("momentum-")}


def _floats(values: Mapping[str, Any]) -> dict[str, float]:
    """Tensors to floats with one device sync for the whole mapping."""
    keys = [k for k, v in values.items() if v is not None]
    if not keys:
        return {}
    tensors = [values[k] for k in keys]
    if all(isinstance(t, torch.Tensor) for t in tensors):
        stacked = torch.stack([t.detach().reshape(()).to(torch.float32) for t in tensors])
        return dict(zip(keys, stacked.cpu().tolist(), strict=True))
    return {k: float(v) for k, v in zip(keys, tensors, strict=True)}


class ProgressCallback(pl.Callback):
    """Streams training progress and enforces cancellation (see the module docstring)."""

    def __init__(
        self,
        emit: Callable[[ProgressEvent], None],
        check_cancelled: Callable[[], None],
        *,
        max_epochs: int,
        train_frames: int,
        val_frames: int,
        logger: MemoryLogger | None = None,
        start_message: str = "Gradient training",
        start_epoch: int = 0,
    ) -> None:
        super().__init__()
        self._emit = emit
        self.start_message = start_message
        self.start_epoch = start_epoch
        self._check_cancelled = check_cancelled
        self.max_epochs = max_epochs
        self.train_frames = train_frames
        self.val_frames = val_frames
        self.logger = logger
        self._train_done = 0
        self._val_done = 0
        self.last_train_losses: dict[str, float] = {}
        self.last_val: dict[str, float] = {}

    # -- helpers ---------------------------------------------------------------------------------
    def _epochs(self, trainer: pl.Trainer, finished: bool = False) -> tuple[int, int]:
        current = trainer.current_epoch + (0 if finished else 1)
        return (min(current, self.max_epochs), self.max_epochs)

    def _cancel_point(self, trainer: pl.Trainer) -> None:
        try:
            self._check_cancelled()
        except RunCancelled:
            trainer.should_stop = True
            raise

    def _event(self, trainer: pl.Trainer, stage: str, **kwargs: Any) -> ProgressEvent:
        return ProgressEvent(
            status="running",
            stage=stage,
            epoch=trainer.current_epoch,
            global_step=trainer.global_step,
            **kwargs,
        )

    def _epoch_metrics(
        self, trainer: pl.Trainer, keep: Callable[[str], bool], total_key: str = "train_loss"
    ) -> tuple[dict, dict]:
        """Epoch-aggregated values from ``callback_metrics`` split into losses and metrics.

        Losses are ``train_loss``/``val_loss`` and ``train/<loss node>``/``val/<loss node>``; ``total``
        repeats ``total_key``. Everything else (``<metric node>/<metric>``, learning rates) is a metric.
        """
        values = _floats({k: v for k, v in trainer.callback_metrics.items() if keep(k)})
        losses = {
            k: v for k, v in values.items() if k.endswith("_loss") or k.split("/", 1)[0] in ("train", "val")
        }
        if total_key in losses:
            losses["total"] = losses[total_key]
        metrics = {k: v for k, v in values.items() if k not in losses}
        if self.logger is not None:
            metrics.update(self.logger.learning_rates())
        return losses, metrics

    # -- fit -------------------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._emit(
            self._event(
                trainer,
                "train",
                hook="fit_start",
                epochs=(self.start_epoch, self.max_epochs),
                message=self.start_message,
            )
        )

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._cancel_point(trainer)
        self._train_done = 0
        self._emit(
            self._event(
                trainer,
                "train",
                hook="epoch_start",
                epochs=self._epochs(trainer),
                progress=(0, self.train_frames),
                message=f"epoch {trainer.current_epoch + 1}/{self.max_epochs}",
            )
        )

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._cancel_point(trainer)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not isinstance(outputs, Mapping):
            return
        self._train_done = min(self._train_done + int(outputs.get("batch_size", 0)), self.train_frames)
        values = _floats({**outputs.get("losses", {}), **outputs.get("metrics", {})})
        losses = {k: values[k] for k in outputs.get("losses", {})}
        metrics = {k: values[k] for k in outputs.get("metrics", {})}
        if self.logger is not None:
            metrics.update(self.logger.learning_rates())
        self.last_train_losses = losses
        self._emit(
            self._event(
                trainer,
                "train",
                batch_idx=batch_idx,
                losses=losses,
                metrics=metrics,
                hook="train_progress",
                progress=(self._train_done, self.train_frames),
                epochs=self._epochs(trainer),
            )
        )

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        losses, metrics = self._epoch_metrics(trainer, lambda k: True)
        self._emit(
            self._event(
                trainer,
                "train",
                hook="epoch_end",
                losses=losses,
                metrics=metrics,
                epochs=self._epochs(trainer),
                progress=(self._train_done, self.train_frames),
                message=f"epoch {trainer.current_epoch + 1}/{self.max_epochs} done",
            )
        )

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        losses, metrics = self._epoch_metrics(trainer, lambda k: True)
        self._emit(
            self._event(
                trainer,
                "train",
                hook="fit_end",
                losses=losses,
                metrics=metrics,
                epochs=(min(trainer.current_epoch, self.max_epochs), self.max_epochs),
                message="fit finished" + (" early (stopped by a callback)" if trainer.should_stop else ""),
            )
        )

    # -- validation ------------------------------------------------------------------------------
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._val_done = 0
        if trainer.sanity_checking:
            return
        self._emit(
            self._event(
                trainer,
                "val",
                hook="validation_start",
                split="val",
                epochs=self._epochs(trainer),
                progress=(0, self.val_frames),
            )
        )

    def on_validation_batch_start(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._cancel_point(trainer)

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking or not isinstance(outputs, Mapping):
            return
        self._val_done = min(self._val_done + int(outputs.get("batch_size", 0)), self.val_frames)
        values = _floats({**outputs.get("losses", {}), **outputs.get("metrics", {})})
        losses = {k: values[k] for k in outputs.get("losses", {})}
        metrics = {k: values[k] for k in outputs.get("metrics", {})}
        self._emit(
            self._event(
                trainer,
                "val",
                batch_idx=batch_idx,
                losses=losses,
                metrics=metrics,
                hook="validation_progress",
                split="val",
                progress=(self._val_done, self.val_frames),
                epochs=self._epochs(trainer),
            )
        )

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        losses, metrics = self._epoch_metrics(
            trainer, lambda k: not k.startswith("train"), total_key="val_loss"
        )
        self.last_val = {**losses, **metrics}
        self._emit(
            self._event(
                trainer,
                "val",
                hook="validation_end",
                split="val",
                losses=losses,
                metrics=metrics,
                epochs=self._epochs(trainer),
                progress=(self._val_done, self.val_frames),
            )
        )

    # -- test (Trainer.test is not used by the trainer itself, but keep cancellation there too) ---
    on_test_batch_start = on_validation_batch_start
