"""Train progress as text (:func:`format_progress`) and as a tqdm bar on terminals."""

from __future__ import annotations

import os
import sys
from typing import IO, Any

from cuvis_cluster.wire.pb import pb

TERMINAL_STATUSES = frozenset({pb.TRAIN_STATUS_COMPLETE, pb.TRAIN_STATUS_ERROR, pb.TRAIN_STATUS_CANCELLED})


def _enum_label(enum: Any, value: int, prefix: str) -> str:
    try:
        name = enum.Name(value)
    except ValueError:
        return str(value)
    return name.removeprefix(prefix)


def status_name(status: int) -> str:
    """``pb.TRAIN_STATUS_COMPLETE`` -> ``"COMPLETE"``."""
    return _enum_label(pb.TrainStatus, status, "TRAIN_STATUS_")


def _numbers(values: Any) -> str:
    keys = sorted(values, key=lambda k: (k != "total", k))
    return " ".join(f"{k}={values[k]:.4g}" for k in keys)


def format_progress(resp: pb.TrainResponse) -> str:
    """One line describing a Train progress message, e.g.

    ``RUNNING train epoch 2/5 batch 3 step 12 | loss total=0.1234 bce=0.05 | iou=0.81 | Gradient training``
    """
    parts = [status_name(resp.status)]
    ctx = resp.context
    event = resp.event
    if ctx.stage:
        parts.append(_enum_label(pb.ExecutionStage, ctx.stage, "EXECUTION_STAGE_").lower())
    if event.hook:
        parts.append(_enum_label(pb.TrainHook, event.hook, "TRAIN_HOOK_").lower())
    if event.node:
        parts.append(f"node {event.node}")
    if event.epochs.total:
        parts.append(f"epoch {event.epochs.current}/{event.epochs.total}")
    elif ctx.epoch:
        parts.append(f"epoch {ctx.epoch}")
    if event.progress.total:
        parts.append(f"frames {event.progress.done}/{event.progress.total}")
    if ctx.batch_idx:
        parts.append(f"batch {ctx.batch_idx}")
    if ctx.global_step:
        parts.append(f"step {ctx.global_step}")
    line = " ".join(parts)
    if resp.losses:
        line += " | loss " + _numbers(resp.losses)
    if resp.metrics:
        line += " | " + _numbers(resp.metrics)
    if resp.message:
        line += " | " + " ".join(resp.message.split())
    return line


def attached_to_terminal(stream: IO[str] | None = None) -> bool:
    """True when progress output goes to a terminal (``sys.stderr`` by default)."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


def _has_screen_size(stream: IO[str]) -> bool:
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return size.columns > 0 and size.lines > 0


class ProgressBar:
    """A tqdm bar fed with TrainResponse messages.

    The bar counts frames of the current pass when the server reports them, else epochs, else messages;
    the description names the stage and the postfix shows the latest losses.
    """

    def __init__(self, description: str = "train", stream: IO[str] | None = None) -> None:
        from tqdm.auto import tqdm

        stream = sys.stderr if stream is None else stream
        # Some pseudo-terminals (CI runners, `script`, fresh ptys) report a 0x0 size, with which tqdm
        # draws nothing at all (it hides bars below the screen height); assume a plain terminal then.
        sized = _has_screen_size(stream)
        self._bar = tqdm(
            total=None,
            desc=description,
            file=stream,
            ncols=None if sized else 100,
            nrows=None if sized else 24,
            leave=True,
            unit="msg",
        )
        self._description = description

    def update(self, resp: pb.TrainResponse) -> None:
        bar = self._bar
        event = resp.event
        if event.progress.total > 0:
            bar.total, bar.n, bar.unit = event.progress.total, event.progress.done, "frame"
        elif event.epochs.total > 0:
            bar.total, bar.n, bar.unit = event.epochs.total, event.epochs.current, "epoch"
        else:
            bar.n += 1
        stage = _enum_label(pb.ExecutionStage, resp.context.stage, "EXECUTION_STAGE_").lower()
        bar.set_description(
            f"{self._description} {stage}" if resp.context.stage else self._description, False
        )
        summary = _numbers(resp.losses) if resp.losses else status_name(resp.status)
        bar.set_postfix_str(summary, refresh=False)
        bar.refresh()

    def close(self) -> None:
        self._bar.close()
