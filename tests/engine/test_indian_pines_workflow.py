"""The shipped RX train run, unchanged but for its data group, runs on the real Indian Pines scene."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cuvis_cluster.engine.data import build_datamodule
from cuvis_cluster.engine.facade import Engine, EngineConfig

pytest.importorskip("tensorly", reason="Indian Pines ships inside the tensorly wheel")

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    positives = labels.sum()
    negatives = len(labels) - positives
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def test_rx_statistical_trains_and_scores_indian_pines(tmp_path):
    (tmp_path / "data").mkdir()
    engine = Engine(
        EngineConfig(
            configs_dir=CONFIGS,
            data_dir=tmp_path / "data",
            output_dir=tmp_path / "out",
            plugin_dirs=[],
            extra_roots=[],
            device="cpu",
        )
    )
    try:
        sid = engine.create_session()
        config = engine.resolve_config(sid, "trainrun", "trainrun/rx_statistical", ["data=indian_pines"])
        assert config["data"]["data_module"] == "indian_pines"
        engine.set_trainrun(sid, config)
        events = engine.train(sid, "statistical", None, None).events(timeout=300)
        assert [e.status for e in events].count("complete") == 1 and events[-1].status == "complete"

        module = build_datamodule(config["data"])
        scores, labels = [], []
        for batch in module.test_dataloader():
            outputs = engine.infer(
                sid, {"cube": batch["cube"], "wavelengths": batch["wavelengths"]}, ["rx_detector.scores"]
            ).tensors
            scores.append(outputs["rx_detector.scores"].reshape(-1).numpy())
            labels.append((batch["mask"] == 2).reshape(-1).numpy())
        score, label = np.concatenate(scores), np.concatenate(labels)
        assert label.any() and not label.all(), "the test split must hold both classes"
        auc = _auc(score, label)
        print(f"Indian Pines RX pixel ROC-AUC (class 13 vs rest, test split): {auc:.3f}")
        assert auc > 0.6
        assert torch.isfinite(torch.from_numpy(score)).all()
    finally:
        engine.shutdown()
