"""The ``LightningModule`` of the gradient trainer: the session's pipeline graph, trained end to end.

* ``training_step`` runs ``pipeline.forward(batch, Stage.TRAIN)`` and minimises the sum of the loss nodes'
  ``loss`` outputs (the train run's ``loss_nodes``); it logs ``train_loss`` and ``train/<loss node>``;
* ``validation_step`` runs the VAL stage and logs ``val_loss``, ``val/<loss node>`` and every metric node's
  values as ``<metric node>/<metric>`` (the names EarlyStopping/ModelCheckpoint monitors use);
* optimizer and scheduler come from :mod:`.registry` (the same entries GetTrainingCapabilities lists);
* checkpoints carry a ``cuvis_cluster`` entry (node names, trainable parameters, optimizer, scheduler)
  that :mod:`cuvis_cluster.engine.checkpoints` reads to decide whether a later run can resume from them;
  resuming keeps the session's current weights (loaded from that checkpoint, maybe changed since) and
  takes only the optimizer, scheduler, loop and callback states from the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch

from cuvis_cluster.engine import checkpoints, schemas
from cuvis_cluster.engine.nodes.base import Node, Stage
from cuvis_cluster.engine.training import registry
from cuvis_cluster.errors import InvalidArgument


def batch_size_of(batch: Mapping[str, Any]) -> int:
    for key in ("cube", "frame_id", "mask"):
        value = batch.get(key)
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return int(value.shape[0])
    return 1


def metric_ports(node: Node) -> list[str]:
    return [name for name, port in node.output_ports().items() if port.kind == "metrics"]


class PipelineModule(pl.LightningModule):
    """A ``LightningModule`` whose model is the pipeline graph and whose loss is the sum of its loss nodes."""

    def __init__(
        self,
        pipeline: Any,
        loss_nodes: list[str],
        metric_nodes: list[str],
        training: schemas.TrainingConfig,
        steps_per_epoch: int = 1,
    ) -> None:
        super().__init__()
        self.pipeline = pipeline
        self.loss_nodes = list(loss_nodes)
        self.metric_nodes = list(metric_nodes)
        self.training_config = training
        self.steps_per_epoch = max(1, steps_per_epoch)
        self._metric_ports = {n: metric_ports(pipeline.node(n)) for n in self.metric_nodes}

    # -- one step, any stage ---------------------------------------------------------------------
    def run_stage(
        self, batch: Mapping[str, Any], stage: Stage
    ) -> tuple[torch.Tensor | None, dict, dict, int]:
        out = self.pipeline(batch, stage)
        losses: dict[str, torch.Tensor] = {}
        for name in self.loss_nodes:
            value = out.get(f"{name}.loss")
            if value is not None:
                losses[name] = value
        total = torch.stack([v.reshape(()) for v in losses.values()]).sum() if losses else None
        metrics: dict[str, torch.Tensor] = {}
        for name, ports in self._metric_ports.items():
            for port in ports:
                values = out.get(f"{name}.{port}")
                if isinstance(values, Mapping):
                    for key, value in values.items():
                        metrics[f"{name}/{key}"] = value
        return total, losses, metrics, batch_size_of(batch)

    def _log_all(self, prefix: str, total: torch.Tensor | None, losses: dict, metrics: dict, bs: int) -> None:
        if total is not None:
            self.log(f"{prefix}_loss", total.detach(), on_step=False, on_epoch=True, batch_size=bs)
        for name, value in losses.items():
            self.log(f"{prefix}/{name}", value.detach(), on_step=False, on_epoch=True, batch_size=bs)
        for key, value in metrics.items():
            name = key if prefix == "val" else f"{prefix}/{key}"
            self.log(name, value, on_step=False, on_epoch=True, batch_size=bs)

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, Any]:
        total, losses, metrics, bs = self.run_stage(batch, Stage.TRAIN)
        missing = [n for n in self.loss_nodes if n not in losses]
        if missing:
            raise InvalidArgument(
                f"loss_nodes: {', '.join(map(repr, missing))} produced no loss in the TRAIN stage; "
                "their inputs were not available (does the train split carry masks, and are the loss nodes "
                "wired?)",
                field="loss_nodes",
            )
        assert total is not None
        if not total.requires_grad:
            raise InvalidArgument(
                f"loss_nodes: the loss of {', '.join(self.loss_nodes)} does not depend on any trainable "
                "parameter; unfreeze a node upstream of the loss (unfreeze_nodes)",
                field="unfreeze_nodes",
            )
        self._log_all("train", total, losses, metrics, bs)
        detached = {"total": total.detach(), **{n: v.detach() for n, v in losses.items()}}
        return {"loss": total, "losses": detached, "metrics": metrics, "batch_size": bs}

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, Any]:
        total, losses, metrics, bs = self.run_stage(batch, Stage.VAL)
        self._log_all("val", total, losses, metrics, bs)
        detached = {n: v.detach() for n, v in losses.items()}
        if total is not None:
            detached = {"total": total.detach(), **detached}
        return {"losses": detached, "metrics": metrics, "batch_size": bs}

    def on_train_epoch_start(self) -> None:
        for node in self.pipeline.nodes.values():
            node.on_epoch_start(self.current_epoch)

    # -- checkpoints -----------------------------------------------------------------------------
    def trainable_names(self) -> list[str]:
        return [name for name, p in self.pipeline.named_parameters() if p.requires_grad]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        scheduler = self.training_config.scheduler
        checkpoint[checkpoints.OURS_ENTRY] = {
            "format": checkpoints.FORMAT,
            "nodes": list(self.pipeline.nodes),
            "trainable": self.trainable_names(),
            "optimizer": str(self.training_config.optimizer.name),
            "scheduler": str(scheduler.name) if scheduler is not None else "",
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Resuming (Trainer.fit(ckpt_path=...)): the session's weights were loaded from this checkpoint
        # (through the nodes' own load_state_dict) and may have changed since (statistical re-fit); they
        # win over the file's copy, so Lightning loads no model state, only the training state.
        checkpoint["state_dict"] = {}
        self.strict_loading = False

    def configure_optimizers(self) -> Any:
        params = [p for p in self.pipeline.parameters() if p.requires_grad]
        optimizer = registry.build_optimizer(params, self.training_config.optimizer)
        if self.training_config.scheduler is None:
            return optimizer
        scheduler = registry.build_scheduler(
            optimizer,
            self.training_config.scheduler,
            self.training_config.trainer.max_epochs,
            self.steps_per_epoch,
        )
        return {"optimizer": optimizer, "lr_scheduler": scheduler}
