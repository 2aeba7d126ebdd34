"""A train run: one trainer function in a background thread, its events in a queue.

Guarantees the servicer relies on:

* iterating a :class:`TrainRun` yields every event and ends after exactly one terminal event
  ("complete", "error" or "cancelled");
* :meth:`TrainRun.cancel` is idempotent and takes effect at the trainer's next ``check_cancelled()``
  (trainers call it at least once per batch);
* when the terminal event is "error", :attr:`TrainRun.error` holds the exception (a
  :class:`~cuvis_cluster.errors.CuvisError` for user problems, anything else is a bug -> INTERNAL);
* the session's training flag is cleared *before* the terminal event is queued, so a client that reacts
  to COMPLETE with a mutating call is not refused.
"""

from __future__ import annotations

import importlib
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from cuvis_cluster.engine.types import ProgressEvent, TrainResources
from cuvis_cluster.errors import CuvisError, ResourceExhausted, Unimplemented

log = logging.getLogger(__name__)

# trainer type -> "module:function"; the gradient and calibration modules belong to issue 5.
TRAINERS: dict[str, str] = {
    "statistical": "cuvis_cluster.engine.training.statistical:run_statistical",
    "gradient": "cuvis_cluster.engine.training.gradient:run_gradient",
    "calibration": "cuvis_cluster.engine.training.calibration:run_calibration",
}

TrainerFn = Callable[["TrainContext"], "ProgressEvent | None"]


class RunCancelled(Exception):
    """Raised by :meth:`TrainContext.check_cancelled` to unwind a trainer."""


def load_trainer(trainer_type: str) -> TrainerFn:
    target = TRAINERS.get(trainer_type)
    if target is None:
        raise Unimplemented(f"trainer type {trainer_type!r} is not supported")
    module_name, func_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise Unimplemented(f"trainer type {trainer_type!r} is not available on this worker") from None
    func = getattr(module, func_name, None)
    if func is None:
        raise Unimplemented(f"trainer type {trainer_type!r} is not available on this worker")
    return func


@dataclass
class TrainContext:
    """What a trainer function gets."""

    trainer_type: str
    session: Any  # engine.sessions.Session
    pipeline: Any  # engine.pipeline.Pipeline
    data: dict[str, Any] | None  # DataConfig (JSON form)
    training: dict[str, Any] | None  # TrainingConfig (JSON form)
    trainrun: dict[str, Any] | None  # TrainRunConfig (JSON form) or None
    device: torch.device
    resources: TrainResources  # the output root and data modules (engine.roots.Roots)
    run: TrainRun | None = None
    state: dict[str, Any] = field(default_factory=dict)

    def emit(self, event: ProgressEvent) -> None:
        if event.terminal:
            raise ValueError("trainers must not emit terminal events; return the final event instead")
        assert self.run is not None
        self.run.put(event)

    @property
    def cancelled(self) -> bool:
        return self.run is not None and self.run.cancel_requested

    def check_cancelled(self) -> None:
        if self.cancelled:
            raise RunCancelled(self.run.cancel_reason if self.run else "cancelled")

    def datamodule(self) -> Any:
        """The data module for :attr:`data` (confined to the engine's data roots)."""
        return self.resources.build_datamodule(self.data)


_END = object()


class TrainRun:
    """See the module docstring."""

    def __init__(
        self,
        trainer: TrainerFn,
        ctx: TrainContext,
        *,
        on_event: Callable[[ProgressEvent], None] | None = None,
        on_finish: Callable[[], None] | None = None,
    ) -> None:
        self._trainer = trainer
        self.ctx = ctx
        ctx.run = self
        self._on_event = on_event
        self._on_finish = on_finish
        self._queue: queue.Queue[Any] = queue.Queue()
        self._cancel = threading.Event()
        self.cancel_reason = ""
        self.error: BaseException | None = None
        self.last_event: ProgressEvent | None = None
        self.terminal_event: ProgressEvent | None = None
        self._thread = threading.Thread(target=self._main, name=f"train-{ctx.trainer_type}", daemon=True)
        self._finished = threading.Event()

    # -- control ---------------------------------------------------------------------------------
    def start(self) -> TrainRun:
        self._thread.start()
        return self

    def cancel(self, reason: str = "cancelled by client") -> None:
        if not self._cancel.is_set():
            self.cancel_reason = reason or "cancelled"
            self._cancel.set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    @property
    def done(self) -> bool:
        return self._finished.is_set()

    def join(self, timeout: float | None = None) -> bool:
        return self._finished.wait(timeout)

    # -- events ----------------------------------------------------------------------------------
    def put(self, event: ProgressEvent) -> None:
        self.last_event = event
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:
                log.exception("train event listener failed")
        self._queue.put(event)

    def __iter__(self) -> Iterator[ProgressEvent]:
        while True:
            item = self._queue.get()
            if item is _END:
                self._queue.put(_END)  # a second iterator ends at once
                return
            yield item
            if item.terminal:
                return

    def events(self, timeout: float | None = None) -> list[ProgressEvent]:
        """Everything until the terminal event (tests and non-streaming callers)."""
        if not self.join(timeout):
            raise TimeoutError("train run did not finish in time")
        return list(self)

    # -- the thread ------------------------------------------------------------------------------
    def _main(self) -> None:
        ctx = self.ctx
        final: ProgressEvent
        try:
            returned = self._trainer(ctx)
            if self._cancel.is_set():
                raise RunCancelled(self.cancel_reason)
            if isinstance(returned, ProgressEvent) and returned.status == "complete":
                final = returned
            else:
                final = ProgressEvent(
                    status="complete", message=f"{ctx.trainer_type.capitalize()} training complete"
                )
                if self.last_event is not None:
                    final.stage = self.last_event.stage
                    final.epoch = self.last_event.epoch
                    final.global_step = self.last_event.global_step
        except RunCancelled as exc:
            final = self._after(ProgressEvent(status="cancelled", message=f"training cancelled: {exc}"))
        except torch.cuda.OutOfMemoryError as exc:
            self.error = ResourceExhausted(f"training ran out of GPU memory: {str(exc).splitlines()[0]}")
            final = self._after(ProgressEvent(status="error", message=str(self.error)))
        except CuvisError as exc:
            self.error = exc
            final = self._after(ProgressEvent(status="error", message=f"training failed: {exc.message}"))
        except Exception as exc:  # a bug: the servicer reports INTERNAL with a request id
            log.exception("%s training failed", ctx.trainer_type)
            self.error = exc
            final = self._after(
                ProgressEvent(status="error", message=f"training failed: {type(exc).__name__}")
            )
        finally:
            if self._on_finish is not None:
                try:
                    self._on_finish()
                except Exception:
                    log.exception("train run finish hook failed")
        self.terminal_event = final
        self.put(final)
        self._queue.put(_END)
        self._finished.set()

    def _after(self, event: ProgressEvent) -> ProgressEvent:
        """Carry the context (stage, epoch, step) of the last event into a terminal one."""
        last = self.last_event
        if last is not None:
            event.stage = last.stage
            event.epoch = last.epoch
            event.batch_idx = last.batch_idx
            event.global_step = last.global_step
            event.node = last.node
        return event
