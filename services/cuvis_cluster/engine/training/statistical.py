"""Statistical training: fit every node with a statistical initialisation, in topological order.

Each node is fed by its ancestors' outputs over the train split (stage INFERENCE, ``torch.no_grad``), so
a node downstream of another statistical node sees that node already fitted. One pass over the train
split per node. Events: a start message, per node ``statistical_node_start``, one
``statistical_progress`` per batch and ``statistical_node_end``; the run adds the single COMPLETE.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from cuvis_cluster.engine.nodes.base import Stage
from cuvis_cluster.engine.training.run import TrainContext
from cuvis_cluster.engine.types import ProgressEvent
from cuvis_cluster.errors import InvalidArgument


def _frames(batch: dict[str, Any]) -> int:
    cube = batch.get("cube")
    return int(cube.shape[0]) if isinstance(cube, torch.Tensor) and cube.dim() >= 1 else 1


class _Counter:
    def __init__(self) -> None:
        self.global_step = 0


class _NodeInputs:
    """Re-iterable stream of one node's inputs over the train split (one pass per ``iter``)."""

    def __init__(self, ctx: TrainContext, name: str, loader: Any, total: int, counter: _Counter) -> None:
        self.ctx = ctx
        self.name = name
        self.loader = loader
        self.total = total
        self.counter = counter

    def __iter__(self) -> Iterator[dict[str, Any]]:
        ctx, pipeline = self.ctx, self.ctx.pipeline
        frames = 0
        for batch_idx, batch in enumerate(self.loader):
            ctx.check_cancelled()
            with torch.no_grad():
                inputs = pipeline.node_inputs(self.name, batch, Stage.INFERENCE)
            if inputs is None:
                continue
            yield inputs
            frames += _frames(batch)
            self.counter.global_step += 1
            ctx.emit(
                ProgressEvent(
                    status="running",
                    stage="train",
                    epoch=0,
                    batch_idx=batch_idx,
                    global_step=self.counter.global_step,
                    message=f"statistical init of {self.name}: {frames}/{self.total} frames",
                    hook="statistical_progress",
                    split="train",
                    progress=(frames, self.total),
                    node=self.name,
                )
            )
        ctx.check_cancelled()


def run_statistical(ctx: TrainContext) -> ProgressEvent | None:
    pipeline = ctx.pipeline
    names = pipeline.statistical_nodes()
    ctx.emit(
        ProgressEvent(
            status="running",
            stage="train",
            message=f"Starting statistical training ({len(names)} node(s): {', '.join(names) or 'none'})",
        )
    )
    if not names:
        return ProgressEvent(
            status="complete",
            message="Statistical training complete (no node needs a statistical initialisation)",
        )
    dm = ctx.datamodule()
    ids = dm.ids("train")
    if not ids:
        raise InvalidArgument(
            "data.train_ids: the train split is empty; statistical training needs train frames",
            field="data.train_ids",
        )
    loader = dm.dataloader("train")
    counter = _Counter()
    pipeline.eval()

    def node_event(name: str, hook: str, message: str, done: int) -> None:
        ctx.emit(
            ProgressEvent(
                status="running",
                stage="train",
                global_step=counter.global_step,
                message=message,
                hook=hook,
                split="train",
                progress=(done, len(ids)),
                node=name,
            )
        )

    for index, name in enumerate(names):
        ctx.check_cancelled()
        node = pipeline.node(name)
        label = f"{name} ({node.type_name})"
        node_event(name, "statistical_node_start", f"fitting {label} [{index + 1}/{len(names)}]", 0)
        with torch.no_grad():
            node.fit(_NodeInputs(ctx, name, loader, len(ids), counter))
        node.fitted = True
        node_event(name, "statistical_node_end", f"fitted {label}", len(ids))
    return ProgressEvent(
        status="complete",
        stage="train",
        global_step=counter.global_step,
        message=f"Statistical training complete ({len(names)} node(s) fitted)",
    )
