"""End-to-end anomaly detection quality of the RX nodes on the data modules.

Pixels whose class is not a normal class (0 background, 1 black lentil) are anomalies: brown lentils and
stones. This is upstream's ``normal_class_ids=[0, 1]`` rule, so background pixels count as normal.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from cuvis_cluster.engine.data import build_datamodule
from cuvis_cluster.engine.nodes.anomaly import RXGlobal
from cuvis_cluster.engine.nodes.conversion import ScoreToLogit
from cuvis_cluster.engine.nodes.deciders import BinaryDecider
from cuvis_cluster.engine.nodes.io import HyperspectralInput
from cuvis_cluster.engine.nodes.metrics import AnomalyDetectionMetrics
from cuvis_cluster.engine.nodes.normalization import MinMaxNormalizer


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Pixel ROC-AUC by the rank-sum (Mann-Whitney) formula, ties counted half."""
    s = scores.reshape(-1).double()
    y = labels.reshape(-1).bool()
    order = torch.argsort(s)
    sorted_s = s[order]
    ranks = torch.empty_like(s)
    ranks[order] = torch.arange(1, s.numel() + 1, dtype=torch.float64)
    # Average ranks over ties.
    _, inverse, counts = torch.unique(sorted_s, return_inverse=True, return_counts=True)
    first = torch.cumsum(counts, 0) - counts + 1
    mean_rank = first.double() + (counts.double() - 1) / 2
    ranks[order] = mean_rank[inverse]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def test_roc_auc_helper() -> None:
    assert roc_auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])) == pytest.approx(0.75)
    assert roc_auc(torch.tensor([1.0, 1.0]), torch.tensor([0, 1])) == pytest.approx(0.5)


def fit_rx(dm, channels: int, normal_class_ids=(0, 1)):
    source = HyperspectralInput(normal_class_ids=list(normal_class_ids))
    norm = MinMaxNormalizer()
    rx = RXGlobal(num_channels=channels)
    logit = ScoreToLogit()
    batches = [source(**b) for b in dm.train_dataloader()]
    norm.fit({"data": b["cube"]} for b in batches)
    normalized = [norm(data=b["cube"])["normalized"] for b in batches]
    rx.fit({"data": x} for x in normalized)
    logit.fit({"scores": rx(data=x)["scores"]} for x in normalized)

    def score(batch):
        inputs = source(**batch)
        scores = rx(data=norm(data=inputs["cube"])["normalized"])["scores"]
        return scores, inputs["mask"], logit(scores=scores)["logits"]

    return score


def test_rx_detects_brown_lentils_and_stones_on_synthetic_lentils() -> None:
    dm = build_datamodule(
        {
            "data_module": "lentils_synthetic",
            "batch_size": 2,
            "train_ids": "0-5",
            "test_ids": "10-13",
            "params": {"height": 64, "width": 64, "num_frames": 16, "seed": 0},
        }
    )
    score = fit_rx(dm, 61)
    all_scores, all_masks, all_classes, all_logits = [], [], [], []
    for batch in dm.test_dataloader():
        s, m, logits = score(batch)
        all_scores.append(s)
        all_masks.append(m)
        all_classes.append(batch["mask"])
        all_logits.append(logits)
    scores, masks, classes = torch.cat(all_scores), torch.cat(all_masks), torch.cat(all_classes)
    auc = roc_auc(scores, masks)
    lentils = classes.reshape(-1) >= 1
    auc_vs_black = roc_auc(scores.reshape(-1)[lentils], masks.reshape(-1)[lentils])
    print(
        f"\nRX pixel ROC-AUC on synthetic Lentils test split: {auc:.4f} "
        "(brown lentils + stones vs background + black lentils)"
    )
    print(f"RX pixel ROC-AUC, anomalies vs black lentils only: {auc_vs_black:.4f}")
    assert auc >= 0.95
    assert auc_vs_black >= 0.9
    # The decided pipeline (logit bias = mean + 2 std, sigmoid >= 0.5) finds most anomalous pixels, and the
    # ranking is far better than chance (AP of a random ranking = the anomalous fraction).
    decisions = BinaryDecider()(logits=torch.cat(all_logits))["decisions"]
    metrics = AnomalyDetectionMetrics()(decisions=decisions, targets=masks, logits=torch.cat(all_logits))[
        "metrics"
    ]
    print("metrics:", {k: round(float(v), 3) for k, v in metrics.items()})
    base_rate = float(masks.float().mean())
    assert float(metrics["recall"]) > 0.5 and float(metrics["average_precision"]) > 10 * base_rate


@pytest.mark.skipif(importlib.util.find_spec("tensorly") is None, reason="tensorly is not installed")
def test_the_same_rx_nodes_run_on_indian_pines() -> None:
    # Real AVIRIS data, resampled to the Lentils band grid so the 61-channel RX runs unchanged.
    # "Anomaly" here = the rare stone-steel-towers class (16) against everything else.
    dm = build_datamodule(
        {
            "data_module": "indian_pines",
            "batch_size": 4,
            "train_ids": "0-15",
            "test_ids": "0-15",
            "params": {"patch_size": 36, "anomaly_class_ids": [16]},
        }
    )
    score = fit_rx(dm, 61)
    scores, masks = zip(*[score(b)[:2] for b in dm.test_dataloader()], strict=True)
    auc = roc_auc(torch.cat(scores), torch.cat(masks))
    print(f"\nRX pixel ROC-AUC on Indian Pines (class 16 vs rest): {auc:.4f}")
    assert torch.isfinite(torch.cat(scores)).all()
    assert auc > 0.5
