"""Train(GRADIENT): the session's pipeline trained end to end with Lightning.

:class:`PipelineModule` is a ``LightningModule`` around the session's
:class:`~cuvis_cluster.engine.pipeline.Pipeline`:

* ``training_step`` runs ``pipeline.forward(batch, Stage.TRAIN)`` and minimises the sum of the loss nodes'
  ``loss`` outputs (the train run's ``loss_nodes``); it logs ``train_loss`` and ``train/<loss node>``;
* ``validation_step`` runs the VAL stage and logs ``val_loss``, ``val/<loss node>`` and every metric node's
  values as ``<metric node>/<metric>`` (the names EarlyStopping/ModelCheckpoint monitors use);
* optimizer and scheduler come from :mod:`.registry` (the same entries GetTrainingCapabilities lists).

:func:`run_gradient` is the trainer function the :class:`~cuvis_cluster.engine.training.run.TrainRun` runs in
its background thread. It validates the plan (loss nodes, trainable parameters, statistical fitting), applies
``freeze_nodes``/``unfreeze_nodes`` and the seed, runs ``Trainer.fit`` with a :class:`ProgressCallback` that
streams events and enforces cancellation, restores the best checkpoint when a monitored checkpoint callback
is configured, evaluates the val and test splits, and leaves the session clean whatever happens: the
pipeline back on its device, in eval mode, trainable buffers turned back into buffers and the
``requires_grad`` flags as they were.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from cuvis_cluster.engine import schemas
from cuvis_cluster.engine.nodes.base import Node, Stage
from cuvis_cluster.engine.training import registry
from cuvis_cluster.engine.training.callbacks import MemoryLogger, ProgressCallback
from cuvis_cluster.engine.training.run import RunCancelled, TrainContext
from cuvis_cluster.engine.types import ProgressEvent
from cuvis_cluster.errors import CuvisError, FailedPrecondition, InvalidArgument, PermissionDenied

# A server must not chat: Lightning's info lines ("GPU available...", "Seed set to...") and its hints
# about dataloader workers are meant for notebooks.
for _name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
    logging.getLogger(_name).setLevel(logging.WARNING)
for _pattern in (
    r".*does not have many workers.*",
    r".*has no `val_dataloader`.*",
    r".*Checkpoint directory .* exists and is not empty.*",
    r".*is smaller than the logging interval.*",
    r".*GPU available but not used.*",
    r".*`training_step` returned.*",
    r".*module\(s\) in eval mode at the start of training.*",
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
):
    warnings.filterwarnings("ignore", message=_pattern)


# -------------------------------------------------------------------------------------------------
# the LightningModule
# -------------------------------------------------------------------------------------------------
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


# -------------------------------------------------------------------------------------------------
# the plan: everything validated before Lightning starts
# -------------------------------------------------------------------------------------------------
@dataclass
class GradientPlan:
    training: schemas.TrainingConfig
    loss_nodes: list[str]
    metric_nodes: list[str]
    freeze_nodes: list[str]
    unfreeze_nodes: list[str]
    output_dir: str = ""
    deciders: list[str] = field(default_factory=list)


def training_config(ctx: TrainContext) -> schemas.TrainingConfig:
    raw = ctx.training or (ctx.trainrun or {}).get("training")
    if not raw:
        return schemas.TrainingConfig()
    model = schemas.validate("training", dict(raw), prefix="training")
    assert isinstance(model, schemas.TrainingConfig)
    return model


def make_plan(ctx: TrainContext) -> GradientPlan:
    pipeline = ctx.pipeline
    trainrun = ctx.trainrun or {}
    training = training_config(ctx)

    names = list(trainrun.get("loss_nodes") or [])
    if not names:
        candidates = [n for n in pipeline.order if "loss" in pipeline.node(n).output_ports()]
        hint = f" (loss nodes in this pipeline: {', '.join(candidates)})" if candidates else ""
        raise InvalidArgument(
            f"loss_nodes: gradient training needs the train run's loss_nodes{hint}; "
            "set them with SetTrainRunConfig",
            field="loss_nodes",
        )
    loss_nodes = pipeline.loss_nodes(names)
    not_losses = [n for n in loss_nodes if "loss" not in pipeline.node(n).output_ports()]
    if not_losses:
        raise InvalidArgument(
            f"loss_nodes: {', '.join(map(repr, not_losses))} have no 'loss' output and cannot be loss nodes",
            field="loss_nodes",
        )

    metric_names = list(trainrun.get("metric_nodes") or [])
    if metric_names:
        metric_nodes = pipeline.resolve_names(metric_names, "metric_nodes")
        bad = [n for n in metric_nodes if not metric_ports(pipeline.node(n))]
        if bad:
            raise InvalidArgument(
                f"metric_nodes: {', '.join(map(repr, bad))} have no metrics output", field="metric_nodes"
            )
    else:  # every metric node reports by default
        metric_nodes = [n for n in pipeline.order if metric_ports(pipeline.node(n))]

    freeze_nodes = pipeline.resolve_names(trainrun.get("freeze_nodes") or [], "freeze_nodes")
    unfreeze_nodes = pipeline.resolve_names(trainrun.get("unfreeze_nodes") or [], "unfreeze_nodes")
    both = sorted(set(freeze_nodes) & set(unfreeze_nodes))
    if both:
        raise InvalidArgument(
            f"freeze_nodes and unfreeze_nodes both name {', '.join(map(repr, both))}", field="freeze_nodes"
        )

    unfitted = [
        n for n in pipeline.order if pipeline.node(n).has_statistical_init() and not pipeline.node(n).fitted
    ]
    if unfitted:
        raise FailedPrecondition(
            f"nodes {', '.join(map(repr, unfitted))} need statistical initialisation first: run "
            "Train(TRAINER_TYPE_STATISTICAL) on this session (or load weights), "
            "then Train(TRAINER_TYPE_GRADIENT)"
        )
    trainer_cfg = training.trainer
    if (isinstance(trainer_cfg.devices, list) and len(trainer_cfg.devices) > 1) or (
        isinstance(trainer_cfg.devices, int) and trainer_cfg.devices > 1
    ):
        raise InvalidArgument(
            "training.trainer.devices: a worker trains a session on one device",
            field="training.trainer.devices",
        )
    deciders = [n for n in pipeline.order if hasattr(pipeline.node(n), "THRESHOLD_PARAMS")]
    return GradientPlan(
        training=training,
        loss_nodes=loss_nodes,
        metric_nodes=metric_nodes,
        freeze_nodes=freeze_nodes,
        unfreeze_nodes=unfreeze_nodes,
        output_dir=str(trainrun.get("output_dir") or ""),
        deciders=deciders,
    )


class TrainableState:
    """Applies freeze/unfreeze for one run and puts every node back as it was afterwards."""

    def __init__(self, pipeline: Any, freeze: list[str], unfreeze: list[str]) -> None:
        self.pipeline = pipeline
        self.freeze = freeze
        self.unfreeze = unfreeze
        self._flags: dict[str, dict[str, bool]] = {}
        self._was_param: dict[str, set[str]] = {}
        self._was_unfrozen: set[str] = set()

    def apply(self) -> None:
        for name, node in self.pipeline.nodes.items():
            self._flags[name] = {k: p.requires_grad for k, p in node.named_parameters()}
            self._was_param[name] = {
                b for b in node.TRAINABLE_BUFFERS if isinstance(getattr(node, b, None), torch.nn.Parameter)
            }
            if getattr(node, "unfrozen", False):  # nodes that train through offsets (RXGlobal)
                self._was_unfrozen.add(name)
        for name in self.freeze:
            self.pipeline.node(name).freeze()
        for name in self.unfreeze:
            self.pipeline.node(name).unfreeze()

    def restore(self) -> None:
        for name in self.unfreeze:
            node = self.pipeline.node(name)
            if getattr(node, "unfrozen", False) and name not in self._was_unfrozen:
                node.freeze()  # folds trained offsets back into the node's buffers
        for name in [*self.unfreeze, *self.freeze]:
            node = self.pipeline.node(name)
            was_param = self._was_param.get(name, set())
            for buffer in node.TRAINABLE_BUFFERS:
                value = getattr(node, buffer, None)
                if isinstance(value, torch.nn.Parameter) and buffer not in was_param:
                    del node._parameters[buffer]
                    node.register_buffer(buffer, value.detach().clone())
        for name, node in self.pipeline.nodes.items():
            flags = self._flags.get(name, {})
            for key, param in node.named_parameters():
                if key in flags:
                    param.requires_grad_(flags[key])


# -------------------------------------------------------------------------------------------------
# helpers
# -------------------------------------------------------------------------------------------------
def output_path(ctx: TrainContext, relative: str, field_name: str) -> Path:
    """``relative`` under the engine's output root (symlinks resolved); PermissionDenied on escapes."""
    root = Path(ctx.engine.config.output_dir).expanduser().resolve()
    target = (root / relative).resolve() if not Path(relative).is_absolute() else Path(relative).resolve()
    if target != root and not target.is_relative_to(root):
        raise PermissionDenied(f"{field_name}: {relative!r} lies outside the output root", field=field_name)
    return target


def _safe_component(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:64] or "run"


def trainer_kwargs(training: schemas.TrainingConfig, device: torch.device) -> dict[str, Any]:
    cfg = training.trainer
    accelerator = (cfg.accelerator or "auto").lower()
    devices: Any = cfg.devices
    if accelerator == "auto":
        # Train where the session's pipeline lives: the engine already picked CUDA when present.
        accelerator = {"cuda": "gpu", "mps": "mps"}.get(device.type, "cpu")
        devices = [device.index or 0] if device.type == "cuda" else 1
    elif devices == "auto":
        devices = 1
    kwargs: dict[str, Any] = {
        "accelerator": accelerator,
        "devices": devices,
        "max_epochs": cfg.max_epochs,
        "max_steps": cfg.max_steps,
        "precision": cfg.precision,
        "gradient_clip_val": cfg.gradient_clip_val,
        "gradient_clip_algorithm": cfg.gradient_clip_algorithm,
        "accumulate_grad_batches": cfg.accumulate_grad_batches,
        "log_every_n_steps": cfg.log_every_n_steps,
        "check_val_every_n_epoch": cfg.check_val_every_n_epoch,
        "val_check_interval": cfg.val_check_interval,
        "limit_train_batches": cfg.limit_train_batches,
        "limit_val_batches": cfg.limit_val_batches,
        "num_sanity_val_steps": cfg.num_sanity_val_steps if cfg.num_sanity_val_steps is not None else 0,
        "deterministic": cfg.deterministic,
        "benchmark": cfg.benchmark,
        "fast_dev_run": cfg.fast_dev_run,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "inference_mode": False,  # nodes update buffers in VAL; inference tensors would poison later training
    }
    return kwargs


def _lightning_error(exc: BaseException) -> CuvisError | None:
    """Lightning's complaints about a user's configuration, as InvalidArgument."""
    text = str(exc).strip()
    if isinstance(exc, MisconfigurationException):
        return InvalidArgument(f"training: {text}", field="training")
    if isinstance(exc, RuntimeError) and "conditioned on metric" in text:
        return InvalidArgument(f"training.callbacks: {text}", field="training.callbacks")
    return None


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
) -> dict[str, Any]:
    """Run the pipeline on a split without gradients; EvaluationOutcome as a dict (also emitted as hooks)."""
    emit = emit or ctx.emit
    stage = Stage.VAL if split == "val" else Stage.TEST
    frames_total = len(loader.dataset) if loader is not None and hasattr(loader, "dataset") else 0

    def _end(outcome: dict[str, Any], **extra: Any) -> dict[str, Any]:
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
        outcome = {"split": split, "status": "no_split", "frames": 0, "metrics": {}, "error": ""}
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
        outcome = {"split": split, "status": "failed", "frames": done, "metrics": {}, "error": exc.message}
        return _end(outcome, message=exc.message)
    finally:
        pipeline.train(was_training)
    metrics = _weighted_means(sums, weights)
    outcome = {"split": split, "status": "evaluated", "frames": done, "metrics": metrics, "error": ""}
    return _end(outcome, metrics=metrics, progress=(done, frames_total))


def _restore_best(
    ctx: TrainContext, module: PipelineModule, checkpoint: Any, trainer: pl.Trainer
) -> dict[str, Any] | None:
    if checkpoint is None:
        return None
    monitor = checkpoint.monitor or ""
    if not monitor:
        return {
            "restored": False,
            "path": checkpoint.last_model_path or "",
            "epoch": trainer.current_epoch,
            "monitor": "",
            "score": None,
            "reason": "no monitor configured: the final weights are kept",
        }
    path = checkpoint.best_model_path
    if not path or not Path(path).is_file():
        return {
            "restored": False,
            "path": "",
            "epoch": trainer.current_epoch,
            "monitor": monitor,
            "score": None,
            "reason": f"no checkpoint was saved for {monitor}",
        }
    state = torch.load(path, map_location="cpu", weights_only=True)
    module.load_state_dict(state["state_dict"], strict=True)
    score = checkpoint.best_model_score
    return {
        "restored": True,
        "path": str(path),
        "epoch": int(state.get("epoch", trainer.current_epoch)),
        "monitor": monitor,
        "score": None if score is None else float(score),
        "reason": f"best {monitor} ({checkpoint.mode})",
    }


# -------------------------------------------------------------------------------------------------
# the trainer function
# -------------------------------------------------------------------------------------------------
def build_trainer(
    ctx: TrainContext, plan: GradientPlan, callbacks: list[Any], logger: MemoryLogger | None
) -> pl.Trainer:
    session_part = _safe_component(str(getattr(ctx.session, "id", "session")))
    root_dir = output_path(ctx, f"lightning/{session_part}", "output_dir")
    kwargs = trainer_kwargs(plan.training, ctx.pipeline.device)
    has_checkpoint = any(type(c).__name__ == "ModelCheckpoint" for c in callbacks)
    enable_ckpt = plan.training.trainer.enable_checkpointing
    if enable_ckpt and not has_checkpoint:
        enable_ckpt = False  # no default ModelCheckpoint writing into the root dir unless configured
    kwargs["enable_checkpointing"] = bool(
        has_checkpoint if enable_ckpt is None else enable_ckpt or has_checkpoint
    )
    return pl.Trainer(
        **kwargs,
        logger=logger if logger is not None else False,
        callbacks=callbacks,
        default_root_dir=str(root_dir),
    )


def run_gradient(ctx: TrainContext) -> ProgressEvent:
    pipeline = ctx.pipeline
    plan = make_plan(ctx)
    cfg = plan.training
    datamodule = ctx.datamodule()
    train_ids, val_ids, test_ids = (datamodule.ids(s) for s in ("train", "val", "test"))
    if not train_ids:
        raise InvalidArgument("data.train_ids: the train split is empty", field="data.train_ids")
    if not val_ids:
        monitors = [e.monitor for e in cfg.callbacks.early_stopping]
        if cfg.scheduler is not None and cfg.scheduler.name == "reduce_on_plateau":
            monitors.append(cfg.scheduler.monitor)
        if cfg.callbacks.checkpoint is not None and cfg.callbacks.checkpoint.monitor:
            monitors.append(cfg.callbacks.checkpoint.monitor)
        needs_val = [m for m in monitors if not m.startswith("train")]
        if needs_val:
            raise InvalidArgument(
                f"data.val_ids: {', '.join(map(repr, needs_val))} are validation values "
                "but the val split is empty",
                field="data.val_ids",
            )

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    generator = torch.Generator().manual_seed(cfg.seed)
    shuffle = bool(datamodule.params.get("shuffle", False))
    train_loader = datamodule.dataloader("train", shuffle=shuffle, generator=generator)
    val_loader = datamodule.dataloader("val") if val_ids else None
    test_loader = datamodule.dataloader("test") if test_ids else None

    state = TrainableState(pipeline, plan.freeze_nodes, plan.unfreeze_nodes)
    device = pipeline.device
    state.apply()
    try:
        if not any(p.requires_grad for p in pipeline.parameters()):
            learnable = [n for n in pipeline.order if pipeline.node(n).has_learnable_params()]
            hint = f"; nodes that can be unfrozen: {', '.join(learnable)}" if learnable else ""
            raise InvalidArgument(
                f"unfreeze_nodes: nothing to train: no parameter of the pipeline requires gradients{hint}",
                field="unfreeze_nodes",
            )
        module = PipelineModule(
            pipeline, plan.loss_nodes, plan.metric_nodes, cfg, steps_per_epoch=len(train_loader)
        )
        logger = MemoryLogger()
        progress = ProgressCallback(
            ctx.emit,
            ctx.check_cancelled,
            max_epochs=cfg.trainer.max_epochs,
            train_frames=len(train_ids),
            val_frames=len(val_ids),
            logger=logger,
        )
        ckpt_dir = cfg.callbacks.checkpoint.dirpath if cfg.callbacks.checkpoint else None
        default_ckpt = f"{plan.output_dir or 'checkpoints'}/{_safe_component(str(ctx.session.id))}"
        cb_ctx = registry.CallbackContext(
            checkpoint_dir=output_path(ctx, ckpt_dir or default_ckpt, "training.callbacks.checkpoint.dirpath")
        )
        user_callbacks = registry.build_callbacks(cfg.callbacks, cb_ctx)
        trainer = build_trainer(ctx, plan, [progress, *user_callbacks], logger)
        ctx.state["trainer"] = trainer
        pipeline.train()  # Lightning keeps the module's mode; nodes may behave differently in training
        try:
            trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader)
        except (RunCancelled, CuvisError):
            raise
        except Exception as exc:
            mapped = _lightning_error(exc)
            if mapped is not None:
                raise mapped from None
            raise
        finally:
            pipeline.to_device(device)
        ctx.check_cancelled()

        checkpoint_cb = next((c for c in user_callbacks if type(c).__name__ == "ModelCheckpoint"), None)
        restored = _restore_best(ctx, module, checkpoint_cb, trainer)
        epoch, step = trainer.current_epoch, trainer.global_step
        if restored is not None:
            ctx.emit(
                ProgressEvent(
                    status="running",
                    stage="train",
                    epoch=epoch,
                    global_step=step,
                    hook="checkpoint_restored",
                    checkpoint=restored,
                    message=("restored " if restored["restored"] else "not restored: ") + restored["reason"],
                )
            )
        evaluations = {}
        for split, loader in (("val", val_loader), ("test", test_loader)):
            evaluations[split] = evaluate_split(ctx, module, loader, split, epoch=epoch, global_step=step)
        losses = progress.last_train_losses
        metrics = {k: v for k, v in progress.last_val.items() if k != "total"}
        # the final message: last validation values as logged, the test evaluation under "test/..."
        for key, value in (evaluations["test"].get("metrics") or {}).items():
            metrics[key if key.startswith("test") else f"test/{key}"] = value
        return ProgressEvent(
            status="complete",
            stage="train",
            epoch=epoch,
            global_step=step,
            losses=losses,
            metrics=metrics,
            message="Gradient training complete",
            epochs=(min(epoch, cfg.trainer.max_epochs), cfg.trainer.max_epochs),
            hook="post_fit_end",
            calibration_pending=bool(plan.deciders) and bool(val_ids),
        )
    finally:
        ctx.state.pop("trainer", None)
        state.restore()
        pipeline.to_device(device)
        pipeline.eval()  # sessions serve Inference in eval mode
