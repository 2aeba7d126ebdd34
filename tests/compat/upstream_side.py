"""Upstream CUVIS.AI's own in-process engine, driven the way a user of cuvis-ai 0.19 drives it.

Loads shipped pipeline YAMLs with ``CuvisPipeline.load_pipeline`` (cuvis_ai_core's builder), fits them
with upstream's ``StatisticalTrainer`` / ``GradientTrainer`` on tiny synthetic Lentils-like frames, runs
inference with ``CuvisPipeline.forward`` and saves weights with ``save_to_file`` (upstream's ``.pt``
layout). Everything upstream writes (tensorboard, lightning logs) lands in a working directory the caller
gives, never in the repository. ``import cuvis_ai.node`` (~6 s) happens on first use only.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cuvis_cluster.engine.data.synthetic import generate_frame

C = 61


def pipeline_root() -> Path:
    """Where the installed cuvis-ai wheel keeps its shipped pipeline YAMLs."""
    import cuvis_ai

    return Path(cuvis_ai.__file__).resolve().parent / "configs" / "pipeline"


def shipped_pipelines() -> list[Path]:
    """Every pipeline YAML shipped in the cuvis-ai wheel (46 in 0.19.3), sorted."""
    return sorted(pipeline_root().rglob("*.yaml"))


def rel_name(path: Path) -> str:
    """``anomaly/rx/rx_statistical`` for a shipped YAML."""
    return path.relative_to(pipeline_root()).with_suffix("").as_posix()


def shipped(name: str) -> Path:
    return pipeline_root() / f"{name}.yaml"


# -- data -----------------------------------------------------------------------------------------------
def frame_batch(frame_id: int, height: int = 32, width: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    """One synthetic frame as an Inference batch: cube [1,H,W,61] uint16, wavelengths [1,61] int32, mask
    [1,H,W] int32."""
    f = generate_frame(frame_id, height=height, width=width, seed=seed, anomaly_rate=0.2)
    return {
        "cube": torch.from_numpy(f["cube"].astype(np.int32)).to(torch.uint16)[None],
        "wavelengths": torch.from_numpy(f["wavelengths"].astype(np.int32))[None],
        "mask": torch.from_numpy(f["mask"].astype(np.int32))[None],
    }


def inputs_for(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch plus the extra inputs some shipped pipelines require (spectral_match's reference)."""
    out = dict(batch)
    out["spectral_signature"] = batch["cube"][:, :1, :1, :].to(torch.float32)
    return out


class _Frames(Dataset):
    def __init__(self, ids: Sequence[int], height: int, width: int) -> None:
        self.ids, self.height, self.width = list(ids), height, width

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in frame_batch(self.ids[i], self.height, self.width).items()}


def datamodule(n_train: int = 4, height: int = 32, width: int = 32) -> Any:
    """A LightningDataModule of synthetic frames (train / val / test splits)."""
    import pytorch_lightning as pl

    class Frames(pl.LightningDataModule):
        def __init__(self) -> None:
            super().__init__()
            self.train_ds = _Frames(range(n_train), height, width)
            self.val_ds = _Frames(range(100, 102), height, width)
            self.test_ds = _Frames(range(200, 202), height, width)

        def train_dataloader(self) -> DataLoader:
            return DataLoader(self.train_ds, batch_size=2, shuffle=False)

        def val_dataloader(self) -> DataLoader:
            return DataLoader(self.val_ds, batch_size=2)

        def test_dataloader(self) -> DataLoader:
            return DataLoader(self.test_ds, batch_size=2)

    return Frames()


# -- upstream's engine ----------------------------------------------------------------------------------
@contextlib.contextmanager
def quiet(workdir: Path) -> Iterator[None]:
    """Run upstream in ``workdir`` (it writes relative to the cwd), with its warnings silenced."""
    workdir.mkdir(parents=True, exist_ok=True)
    with contextlib.chdir(workdir), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def load(yaml_path: Path, weights: Path | None = None, strict: bool = True) -> Any:
    """``CuvisPipeline.load_pipeline`` as a user calls it (built-in registry, no network)."""
    import cuvis_ai.node  # noqa: F401 - registers upstream's node library
    from cuvis_ai_core.pipeline.pipeline import CuvisPipeline

    return CuvisPipeline.load_pipeline(
        str(yaml_path), weights_path=str(weights) if weights else None, strict_weight_loading=strict
    )


def infer(pipeline: Any, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Upstream inference: every port, keyed ``node.port`` (as upstream's Inference names outputs)."""
    from cuvis_ai_schemas.enums import ExecutionStage

    with torch.no_grad():
        raw = pipeline.forward(batch=dict(batch), stage=ExecutionStage.INFERENCE)
    return {f"{node}.{port}": value for (node, port), value in raw.items()}


def needs_fit(pipeline: Any) -> bool:
    return any(getattr(n, "requires_initial_fit", False) for n in pipeline.nodes)


def fit_statistical(pipeline: Any, dm: Any) -> None:
    from cuvis_ai_core.training.trainers import StatisticalTrainer

    StatisticalTrainer(pipeline=pipeline, datamodule=dm).fit()


def fit_gradient(pipeline: Any, dm: Any, loss: Sequence[str], unfreeze: Sequence[str], epochs: int) -> None:
    """Upstream's gradient phase of a train run: unfreeze the named nodes, Lightning fit, few epochs."""
    from cuvis_ai_core.training.trainers import GradientTrainer
    from cuvis_ai_schemas.training import OptimizerConfig, TrainingConfig

    by_name = {n.name: n for n in pipeline.nodes}
    if unfreeze:
        pipeline.unfreeze_nodes_by_name(list(unfreeze))
    config = TrainingConfig(
        seed=0,
        optimizer=OptimizerConfig(name="adam", lr=0.01),
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        enable_checkpointing=False,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer = GradientTrainer(
        pipeline=pipeline,
        datamodule=dm,
        loss_nodes=[by_name[n] for n in loss],
        training_config=config,
    )
    trainer.fit()
    pipeline.unfreeze_structure()


def save(pipeline: Any, yaml_path: Path) -> tuple[Path, Path]:
    """Upstream's ``save_to_file``: the YAML and its ``.pt`` next to it."""
    pipeline.save_to_file(str(yaml_path))
    return yaml_path, yaml_path.with_suffix(".pt")


@dataclass(frozen=True)
class Trained:
    name: str  # the shipped YAML, e.g. anomaly/rx/rx_statistical
    yaml: Path
    weights: Path
    pipeline: Any  # the live upstream pipeline the weights came from


# the shipped pipelines the round-trip tests train with upstream
ROUND_TRIP = ("anomaly/rx/rx_statistical", "anomaly/rx/channel_selector", "anomaly/deep_svdd/deep_svdd")

# shipped YAML -> (loss nodes, nodes to unfreeze) of its gradient phase (from upstream's train runs)
GRADIENT = {
    "anomaly/rx/channel_selector": (("bce",), ("SoftChannelSelector", "RXGlobal", "ScoreToLogit")),
    "anomaly/deep_svdd/deep_svdd": (("deepsvdd_loss",), ("DeepSVDDProjection",)),
}


def train(name: str, workdir: Path, epochs: int = 1, gradient: bool = True) -> Trained:
    """Fit a shipped pipeline with upstream (statistical, then ``epochs`` of gradient where its train run
    has one) on tiny synthetic frames and save it the upstream way under ``workdir``."""
    with quiet(workdir):
        pipeline = load(shipped(name))
        dm = datamodule()
        fit_statistical(pipeline, dm)
        if gradient and name in GRADIENT:
            loss, unfreeze = GRADIENT[name]
            fit_gradient(pipeline, dm, loss, unfreeze, epochs)
        pipeline.torch_layers.eval()
        yaml_path, pt_path = save(pipeline, workdir / f"{Path(name).name}_upstream.yaml")
        close_monitors(pipeline)
    return Trained(name, yaml_path, pt_path, pipeline)


def close_monitors(pipeline: Any) -> None:
    """Close upstream's tensorboard writers while still in the working directory: their background
    flush writes to a path relative to the cwd."""
    for node in pipeline.nodes:
        if type(node).__name__ == "TensorBoardMonitorNode":
            node.cleanup()


def max_abs_diff(a: Any, b: Any) -> float | None:
    """Max |a-b| of two outputs as float64 (None when not comparable: shapes, non-tensors)."""
    ta, tb = _tensor(a), _tensor(b)
    if ta is None or tb is None or ta.shape != tb.shape:
        return None
    if ta.numel() == 0:
        return 0.0
    return float((ta.double() - tb.double()).abs().max())


def flipped_fraction(a: Any, b: Any) -> float | None:
    """Fraction of differing elements when either output is boolean (None otherwise or not comparable)."""
    ta, tb = _tensor(a), _tensor(b)
    if ta is None or tb is None or torch.bool not in (ta.dtype, tb.dtype) or ta.shape != tb.shape:
        return None
    if ta.numel() == 0:
        return 0.0
    return float((ta.bool() != tb.bool()).double().mean())


def max_abs(value: Any) -> float:
    t = _tensor(value)
    return 0.0 if t is None or t.numel() == 0 else float(t.double().abs().max())


def _tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, np.ndarray) and value.dtype != object:
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, int | float) and not isinstance(value, bool):
        return torch.tensor(float(value))
    return None
