"""Metric nodes.

Output contract: a metric node has one output port of ``kind="metrics"`` named ``metrics``; its value is a
``dict[str, Tensor]`` of 0-d float32 tensors (detached). Trainers log every entry as
``<node_name>/<key>`` (e.g. ``metrics_anomaly/iou``); Inference reports them in its ``metrics`` map.
Values are per batch: for an epoch, trainers average them over batches.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import torch

from ._common import bad_input, int_param, require_input
from .base import Node, Port, Stage, register

MASK = ("B", "H", "W", 1)


def average_precision(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Area under the step-wise precision-recall curve, ``Σ (R_k - R_{k-1}) · P_k``, over distinct thresholds.

    Ties are one threshold (all tied pixels enter together), as in the usual definition. Ranking only
    uses the order of ``scores``, so logits and probabilities give the same value (no sigmoid saturation).
    Returns 0 when there is no positive pixel.
    """
    s = scores.reshape(-1).to(torch.float64)
    t = targets.reshape(-1).to(torch.float64)
    positives = t.sum()
    if s.numel() == 0 or positives <= 0:
        return torch.zeros((), dtype=torch.float32, device=scores.device)
    order = torch.argsort(s, descending=True)
    s_sorted, t_sorted = s[order], t[order]
    tp = torch.cumsum(t_sorted, dim=0)
    rank = torch.arange(1, s.numel() + 1, dtype=torch.float64, device=s.device)
    # The last element of each run of equal scores closes a threshold.
    last = torch.ones_like(s_sorted, dtype=torch.bool)
    last[:-1] = s_sorted[1:] != s_sorted[:-1]
    tp_k, n_k = tp[last], rank[last]
    precision = tp_k / n_k
    recall = tp_k / positives
    recall_prev = torch.cat([recall.new_zeros(1), recall[:-1]])
    return ((recall - recall_prev) * precision).sum().to(torch.float32)


def binned_average_precision(probs: torch.Tensor, targets: torch.Tensor, bins: int) -> torch.Tensor:
    """Average precision over ``bins`` thresholds evenly spaced on [0, 1] (upstream's
    ``BinaryAveragePrecision(thresholds=bins)``): ``-Σ (R_{i+1} - R_i) · P_i`` over the thresholds in
    increasing order, closed by the point (R=0, P=1); a threshold that flags nothing has precision 1."""
    p = probs.reshape(-1).to(torch.float32)
    t = targets.reshape(-1).bool()
    thresholds = torch.linspace(0.0, 1.0, bins, device=p.device)
    # Pixels flagged at threshold i: p >= thresholds[i]. Counting by bucket avoids a [bins, N] tensor.
    index = torch.searchsorted(thresholds, p, right=True)  # number of thresholds <= p
    flagged_pos = torch.bincount(index[t], minlength=bins + 1).flip(0).cumsum(0).flip(0)[1:]
    flagged_all = torch.bincount(index, minlength=bins + 1).flip(0).cumsum(0).flip(0)[1:]
    tp = flagged_pos.to(torch.float64)
    fp = (flagged_all - flagged_pos).to(torch.float64)
    positives = t.sum().to(torch.float64)
    precision = torch.where(tp + fp > 0, tp / (tp + fp).clamp(min=1), torch.ones_like(tp))
    recall = torch.where(positives > 0, tp / positives.clamp(min=1), torch.zeros_like(tp))
    precision = torch.cat([precision, precision.new_ones(1)])
    recall = torch.cat([recall, recall.new_zeros(1)])
    return (-((recall[1:] - recall[:-1]) * precision[:-1]).sum()).to(torch.float32)


def confusion_metrics(decisions: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """Precision, recall, F1 and IoU of the positive class; a 0/0 ratio is reported as 0."""
    d = decisions.reshape(-1).bool()
    t = targets.reshape(-1).bool()
    tp = (d & t).sum().to(torch.float64)
    fp = (d & ~t).sum().to(torch.float64)
    fn = (~d & t).sum().to(torch.float64)

    def ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
        return torch.where(den > 0, num / den.clamp(min=1), torch.zeros_like(num)).to(torch.float32)

    return {
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "iou": ratio(tp, tp + fp + fn),
    }


def _stages(value: Iterable[str] | None, default: frozenset[Stage]) -> frozenset[Stage]:
    if value is None:
        return default
    if isinstance(value, str):
        value = [value]
    try:
        return frozenset(Stage(str(v).lower()) for v in value)
    except ValueError:
        raise TypeError(
            f"execution_stages must name stages among {[s.value for s in Stage]}, got {list(value)!r}"
        ) from None


@register
class AnomalyDetectionMetrics(Node):
    """Pixel-level precision, recall, F1, IoU and (with ``logits`` or ``scores``) average precision.

    Runs in VAL and TEST by default; ``execution_stages`` (e.g. ``["train", "val", "test"]``) overrides that.
    Upstream's hparams: ``pixel_stride`` keeps every s-th row and column before the pixel metrics;
    ``ap_thresholds`` (default 200, as upstream) computes average precision on ``sigmoid(logits)`` over
    that many thresholds evenly spaced on [0, 1], as upstream's histogram AP does. ``ap_thresholds: null``
    (and the project's ``scores`` input, which is no logit) gives the exact, tie-aware AP over every
    distinct score (this project's earlier behaviour). Values are per batch (upstream reports a running
    value over the epoch's batches).
    """

    INPUTS: ClassVar[dict[str, Port]] = {
        "decisions": Port("bool", MASK),
        "targets": Port("bool", MASK, description="anomaly mask"),
        "logits": Port("float32", MASK, optional=True, description="ranks pixels for average precision"),
        "scores": Port(
            "float32", MASK, optional=True, description="used for average precision without logits"
        ),
    }
    OUTPUTS: ClassVar[dict[str, Port]] = {
        "metrics": Port(
            "float32",
            (),
            kind="metrics",
            description="{precision, recall, f1, iou[, average_precision]} as 0-d tensors",
        )
    }
    CATEGORY = "metric"
    TAGS = ("anomaly", "evaluation")
    STAGES = frozenset({Stage.VAL, Stage.TEST})
    DESCRIPTION = "Pixel-level anomaly detection metrics."
    UPSTREAM_CLASSES = ("cuvis_ai.node.metrics.AnomalyDetectionMetrics",)

    def __init__(
        self,
        ap_thresholds: int | None = 200,
        pixel_stride: int = 1,
        execution_stages: list[str] | None = None,
    ) -> None:
        stages = _stages(execution_stages, type(self).STAGES)
        bins = None if ap_thresholds is None else int_param(ap_thresholds, "ap_thresholds", 2, 1_000_000)
        stride = int_param(pixel_stride, "pixel_stride", minimum=1)
        params: dict[str, Any] = {"ap_thresholds": bins, "pixel_stride": stride}
        if execution_stages is not None:
            params["execution_stages"] = sorted(s.value for s in stages)
        super().__init__(**params)
        self.ap_thresholds, self.pixel_stride = bins, stride
        self.STAGES = stages  # instance override of the class default

    def forward(self, **inputs: Any) -> dict[str, Any]:
        decisions = require_input(self, inputs, "decisions")
        targets = require_input(self, inputs, "targets")
        if targets.dim() == decisions.dim() - 1:
            targets = targets.unsqueeze(-1)
        if targets.shape != decisions.shape:
            raise bad_input(
                self, "targets", f"has shape {tuple(targets.shape)}, decisions {tuple(decisions.shape)}"
            )
        s = self.pixel_stride
        with torch.no_grad():
            if s > 1 and decisions.dim() == 4:
                decisions, targets = decisions[:, ::s, ::s], targets[:, ::s, ::s]
            metrics = confusion_metrics(decisions, targets)
            ranking = inputs.get("logits")
            if ranking is None:
                ranking = inputs.get("scores")
            if ranking is not None:
                if s > 1 and ranking.dim() == 4:
                    ranking = ranking[:, ::s, ::s]
                if ranking.numel() != targets.numel():
                    raise bad_input(
                        self, "logits", f"has shape {tuple(ranking.shape)}, targets {tuple(targets.shape)}"
                    )
                if self.ap_thresholds is None or inputs.get("logits") is None:
                    metrics["average_precision"] = average_precision(ranking, targets)
                else:
                    probs = torch.sigmoid(ranking.to(torch.float32))
                    metrics["average_precision"] = binned_average_precision(
                        probs, targets, self.ap_thresholds
                    )
        return {"metrics": metrics}
