"""Train(GRADIENT): the session's pipeline trained end to end with Lightning.

The model is :class:`~.lightning_module.PipelineModule`, a ``LightningModule`` around the session's
:class:`~cuvis_cluster.engine.pipeline.Pipeline`; the work after fit (checkpoint restore, evaluation of the
val and test splits) lives in :mod:`.post_fit`.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from cuvis_cluster.engine import checkpoints, schemas
from cuvis_cluster.engine.bounds import check_path, client_path, shown
from cuvis_cluster.engine.training import registry
from cuvis_cluster.engine.training.callbacks import MemoryLogger, ProgressCallback
from cuvis_cluster.engine.training.lightning_module import PipelineModule, metric_ports
from cuvis_cluster.engine.training.post_fit import evaluate_split, restore_best
from cuvis_cluster.engine.training.run import RunCancelled, TrainContext
from cuvis_cluster.engine.types import EvaluationOutcome, ProgressEvent
from cuvis_cluster.errors import CuvisError, FailedPrecondition, InvalidArgument, PermissionDenied

log = logging.getLogger(__name__)

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
    root = Path(ctx.resources.output_dir).expanduser().resolve()
    check_path(relative, field_name)
    with client_path(field_name, relative):
        target = (root / relative).resolve() if not Path(relative).is_absolute() else Path(relative).resolve()
    if target != root and not target.is_relative_to(root):
        raise PermissionDenied(
            f"{field_name}: {shown(relative)} lies outside the output root", field=field_name
        )
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


# -------------------------------------------------------------------------------------------------
# the trainer function
# -------------------------------------------------------------------------------------------------
def build_trainer(
    ctx: TrainContext, plan: GradientPlan, callbacks: list[Any], logger: MemoryLogger | None
) -> pl.Trainer:
    session_part = _safe_component(str(getattr(ctx.session, "id", "session")))
    root_dir = output_path(ctx, f"lightning/{session_part}", "output_dir")
    kwargs = trainer_kwargs(plan.training, ctx.pipeline.device)
    has_checkpoint = any(isinstance(c, ModelCheckpoint) for c in callbacks)
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


@dataclass
class Resume:
    """How this run starts with respect to the checkpoint the session's weights came from."""

    ckpt_path: str | None = None  # handed to Trainer.fit: optimizer, scheduler, loops, callbacks
    payload: dict[str, Any] = field(default_factory=dict)  # written to ckpt_path just before fit
    start_epoch: int = 0
    start_step: int = 0
    message: str = "Gradient training"


def plan_resume(ctx: TrainContext, plan: GradientPlan, module: PipelineModule) -> Resume:
    """Resume from the remembered checkpoint when its optimizer state fits this run (see
    :func:`cuvis_cluster.engine.checkpoints.resume_problem`); otherwise train on from its weights."""
    source = checkpoints.remembered(ctx.pipeline)
    if source is None:
        return Resume()
    cfg = plan.training
    scheduler = cfg.scheduler.name if cfg.scheduler is not None else ""
    problem = checkpoints.resume_problem(source, module.trainable_names(), cfg.optimizer.name, scheduler)
    if problem:
        message = (
            f"Gradient training from the weights of {source.describe()}; "
            f"optimizer state and epoch counter not resumed: {problem}"
        )
        log.info("%s", message)
        return Resume(message=message)
    done = source.epochs_done
    if done >= cfg.trainer.max_epochs:
        raise InvalidArgument(
            f"training.trainer.max_epochs: the run resumes from {source.describe()}, which finished "
            f"{done} epoch(s); max_epochs counts every epoch, the resumed ones included "
            f"(it is {cfg.trainer.max_epochs}): set it above {done}",
            field="training.trainer.max_epochs",
        )
    session_part = _safe_component(str(getattr(ctx.session, "id", "session")))
    path = output_path(ctx, f"lightning/{session_part}/resume.ckpt", "output_dir")
    message = f"Gradient training resumed from epoch {done} of {source.describe()}"
    log.info("%s", message)
    return Resume(
        ckpt_path=str(path),
        payload=dict(source.payload or {}),
        start_epoch=done,
        start_step=max(source.global_step, 0),
        message=message,
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
        resume = plan_resume(ctx, plan, module)
        logger = MemoryLogger()
        progress = ProgressCallback(
            ctx.emit,
            ctx.check_cancelled,
            max_epochs=cfg.trainer.max_epochs,
            train_frames=len(train_ids),
            val_frames=len(val_ids),
            logger=logger,
            start_message=resume.message,
            start_epoch=resume.start_epoch,
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
            if resume.ckpt_path:
                Path(resume.ckpt_path).parent.mkdir(parents=True, exist_ok=True)
                torch.save(resume.payload, resume.ckpt_path)
            trainer.fit(
                module,
                train_dataloaders=train_loader,
                val_dataloaders=val_loader,
                ckpt_path=resume.ckpt_path,
                weights_only=True,
            )
        except (RunCancelled, CuvisError):
            raise
        except Exception as exc:
            mapped = _lightning_error(exc)
            if mapped is not None:
                raise mapped from None
            raise
        finally:
            pipeline.to_device(device)
            if resume.ckpt_path:
                Path(resume.ckpt_path).unlink(missing_ok=True)
            if trainer.global_step != resume.start_step:
                # the weights moved on from the checkpoint: a later run starts its own optimizer state
                checkpoints.remember(pipeline, None)
        ctx.check_cancelled()

        checkpoint_cb = next((c for c in user_callbacks if isinstance(c, ModelCheckpoint)), None)
        restored = restore_best(module, checkpoint_cb, trainer)
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
                    message=("restored " if restored.restored else "not restored: ") + restored.reason,
                )
            )
        evaluations: dict[str, EvaluationOutcome] = {}
        for split, loader in (("val", val_loader), ("test", test_loader)):
            evaluations[split] = evaluate_split(ctx, module, loader, split, epoch=epoch, global_step=step)
        losses = progress.last_train_losses
        metrics = {k: v for k, v in progress.last_val.items() if k != "total"}
        # the final message: last validation values as logged, the test evaluation under "test/..."
        for key, value in evaluations["test"].metrics.items():
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
