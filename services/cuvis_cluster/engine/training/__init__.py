"""Trainers. ``run.py`` holds the streaming run machinery shared by every trainer type.

A trainer is a function ``run_<type>(ctx: TrainContext) -> ProgressEvent | None`` running in the train
run's background thread. It emits non-terminal events with ``ctx.emit`` and calls
``ctx.check_cancelled()`` at least once per batch; the run adds exactly one terminal event (the
returned event when it is a "complete" one, else a default "complete"; "cancelled" or "error" when the
function raised). See :data:`TRAINERS` for where each trainer type lives.
"""

from cuvis_cluster.engine.training.run import TRAINERS, RunCancelled, TrainContext, TrainRun, load_trainer

__all__ = ["TRAINERS", "RunCancelled", "TrainContext", "TrainRun", "load_trainer"]
