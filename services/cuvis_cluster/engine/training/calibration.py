"""Train(CALIBRATION): tune the deciders' thresholds on the validation split.

For every decider of the pipeline the calibrator picks the threshold that maximises the pixel F1 score of
its decisions against the anomaly mask on the val split. F1 and IoU are monotonically related
(``IoU = F1 / (2 - F1)``), so the same threshold maximises IoU; both are reported before and after.

* :class:`BinaryDecider` (``sigmoid(logits) >= threshold``): exact search. The val pixels' probabilities are
  collected (4 bytes + 1 byte per pixel, on the CPU), sorted once, and F1 is evaluated at every distinct
  probability with cumulative sums; the chosen threshold is the probability at the best cut-off, so the
  decisions it yields are exactly the evaluated ones.
* :class:`QuantileBinaryDecider` (``x >= quantile_q(x)`` per image): the per-image thresholds of ~250
  candidate quantiles are computed from each image's sorted scores with the decider's own interpolation,
  and true/false positives per candidate are counted with ``searchsorted`` and cumulative mask sums,
  streamed batch by batch (memory independent of the split size).

Skips are explained in the :class:`CalibrationOutcome`: no val split (``no_split``), a val split whose mask
has a single class (``single_class``), no anomaly mask in the pipeline's outputs (``ambiguous_mask``); per
decider, an input that nothing feeds (``nothing_wired``) or that produced no values (``no_scores``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from cuvis_cluster.engine.nodes.base import Node, Stage
from cuvis_cluster.engine.training.run import TrainContext
from cuvis_cluster.engine.types import (
    CalibrationOutcome,
    DeciderCalibration,
    ProgressEvent,
    ThresholdChange,
)
from cuvis_cluster.errors import CuvisError

QUANTILE_CANDIDATES = sorted(
    {
        *(round(0.5 + 0.01 * i, 6) for i in range(30)),  # 0.50 .. 0.79
        *(round(0.8 + 0.001 * i, 6) for i in range(200)),  # 0.800 .. 0.999
        *(round(0.999 + 0.0001 * i, 6) for i in range(11)),  # 0.9990 .. 1.0
    }
)


def confusion(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> dict[str, torch.Tensor]:
    """Precision, recall, F1 and IoU (0 where undefined) from counts; works elementwise on tensors."""
    tp, fp, fn = (x.to(torch.float64) for x in (tp, fp, fn))

    def ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
        return torch.where(den > 0, num / den.clamp(min=1e-12), torch.zeros_like(num))

    return {
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "iou": ratio(tp, tp + fp + fn),
    }


# -------------------------------------------------------------------------------------------------
# the calibration contract of a decider node (see engine/nodes/deciders.py); plugin deciders follow it
# without subclassing, so it is checked structurally
# -------------------------------------------------------------------------------------------------
@runtime_checkable
class ScoringDecider(Protocol):
    """A decider whose decisions are ``calibration_scores(**inputs) >= threshold``."""

    def calibration_scores(self, **inputs: Any) -> torch.Tensor: ...


@runtime_checkable
class TunableDecider(Protocol):
    """A decider whose thresholds can be set."""

    def set_thresholds(self, **values: float) -> None: ...


# -------------------------------------------------------------------------------------------------
# per-decider accumulators
# -------------------------------------------------------------------------------------------------
class BinarySearch:
    """Exact F1-optimal probability threshold for a BinaryDecider."""

    param = "threshold"

    def __init__(self, node: ScoringDecider) -> None:
        self.node = node
        self.scores: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []

    def add(self, value: torch.Tensor, targets: torch.Tensor) -> None:
        probs = self.node.calibration_scores(logits=value)
        self.scores.append(probs.detach().reshape(-1).to("cpu", torch.float32))
        self.targets.append(targets.expand_as(probs).reshape(-1).to("cpu", torch.bool))

    @property
    def empty(self) -> bool:
        return not self.scores

    def solve(self, before: float) -> tuple[float, dict[str, float], dict[str, float]]:
        s = torch.cat(self.scores)
        t = torch.cat(self.targets)
        positives = t.sum()
        before_d = s >= before
        m_before = confusion((before_d & t).sum(), (before_d & ~t).sum(), (~before_d & t).sum())
        order = torch.argsort(s, descending=True)
        s_sorted, t_sorted = s[order], t[order].to(torch.float64)
        tp = torch.cumsum(t_sorted, 0)
        rank = torch.arange(1, s.numel() + 1, dtype=torch.float64)
        last = torch.ones_like(s_sorted, dtype=torch.bool)  # the last of each run of equal probabilities
        last[:-1] = s_sorted[1:] != s_sorted[:-1]
        tp_k, n_k, thr_k = tp[last], rank[last], s_sorted[last]
        f1 = 2 * tp_k / (n_k + positives)
        best = int(torch.argmax(f1))
        tp_b = tp_k[best]
        after = float(thr_k[best])
        m_after = confusion(tp_b, n_k[best] - tp_b, positives - tp_b)
        return after, _floats(m_before), _floats(m_after)


class QuantileSearch:
    """F1-optimal quantile for a QuantileBinaryDecider over a candidate grid (streamed counts)."""

    param = "quantile"

    def __init__(self, node: Node, current: float) -> None:
        self.node = node
        self.candidates = torch.tensor(
            sorted({*QUANTILE_CANDIDATES, round(float(current), 9)}), dtype=torch.float64
        )
        k = self.candidates.numel()
        self.tp = torch.zeros(k, dtype=torch.float64)
        self.fp = torch.zeros(k, dtype=torch.float64)
        self.fn = torch.zeros(k, dtype=torch.float64)
        self.seen = 0

    @property
    def empty(self) -> bool:
        return self.seen == 0

    def add(self, value: torch.Tensor, targets: torch.Tensor) -> None:
        x = value.detach()
        x = x if x.is_floating_point() else x.to(torch.float32)
        t = targets.expand_as(x)
        reduce_dims = list(getattr(self.node, "reduce_dims", [1, 2, 3]))
        keep = [d for d in range(x.dim()) if d not in reduce_dims]
        xs = x.permute(*keep, *reduce_dims).reshape(-1, _prod(x.shape[d] for d in reduce_dims))
        ts = t.permute(*keep, *reduce_dims).reshape(xs.shape)
        n = xs.shape[1]
        if n == 0:
            return
        sorted_x, index = torch.sort(xs, dim=1)
        sorted_t = ts.gather(1, index).to(torch.float64)
        cum = torch.cat([sorted_t.new_zeros(sorted_t.shape[0], 1), torch.cumsum(sorted_t, 1)], dim=1)
        total_pos = cum[:, -1:]
        q = self.candidates.to(x.device)
        pos = q * (n - 1)
        lo = pos.floor().long().clamp(max=n - 1)
        hi = (lo + 1).clamp(max=n - 1)
        v_lo = sorted_x[:, lo]
        v_hi = sorted_x[:, hi]
        frac = (pos - lo.to(pos.dtype)).to(sorted_x.dtype)
        thresholds = torch.where(hi == lo, v_lo, v_lo + frac * (v_hi - v_lo)).contiguous()
        first = torch.searchsorted(sorted_x.contiguous(), thresholds, side="left")  # first index >= threshold
        predicted = (n - first).to(torch.float64)
        tp = total_pos - cum.gather(1, first)
        self.tp += tp.sum(0).cpu()
        self.fp += (predicted - tp).sum(0).cpu()
        self.fn += (total_pos - tp).sum(0).cpu()
        self.seen += xs.shape[0]

    def solve(self, before: float) -> tuple[float, dict[str, float], dict[str, float]]:
        metrics = confusion(self.tp, self.fp, self.fn)
        i_before = int(torch.argmin((self.candidates - before).abs()))
        best = int(torch.argmax(metrics["f1"]))
        return (
            float(self.candidates[best]),
            {k: float(v[i_before]) for k, v in metrics.items()},
            {k: float(v[best]) for k, v in metrics.items()},
        )


def _prod(values: Any) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


def _floats(values: Mapping[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items()}


# -------------------------------------------------------------------------------------------------
# wiring
# -------------------------------------------------------------------------------------------------
@dataclass
class DeciderPlan:
    name: str
    node: Node
    input_port: str
    source: tuple[str, str] | None  # (node, port) feeding the input, None when a batch key feeds it
    target: tuple[str, str] | None  # (node, port) of the anomaly mask it is judged against
    search: BinarySearch | QuantileSearch | None = None
    skip: str = "none"
    skip_detail: str = ""
    thresholds_before: dict[str, float] = field(default_factory=dict)


def deciders_of(pipeline: Any) -> list[str]:
    return [n for n in pipeline.order if getattr(pipeline.node(n), "THRESHOLD_PARAMS", ())]


def anomaly_mask_source(pipeline: Any, decider: str) -> tuple[str, str] | None:
    """Where the decider's ground truth comes from: the ``targets`` of a node judging its decisions, else
    the first boolean ``mask`` output of the graph."""
    for src, sport, dst, _dport in pipeline.connections:
        if src != decider or sport != "decisions":
            continue
        if "targets" in pipeline.node(dst).input_ports():
            incoming = pipeline.incoming(dst, "targets")
            if incoming is not None:
                return incoming
    for name in pipeline.order:
        port = pipeline.node(name).output_ports().get("mask")
        if port is not None and port.dtype == "bool":
            return (name, "mask")
    return None


def plan_decider(pipeline: Any, name: str) -> DeciderPlan:
    node = pipeline.node(name)
    inputs = list(node.input_ports())
    port = "logits" if "logits" in inputs else (inputs[0] if inputs else "")
    source = pipeline.incoming(name, port) if port else None
    plan = DeciderPlan(name, node, port, source, anomaly_mask_source(pipeline, name))
    plan.thresholds_before = node.get_thresholds() if hasattr(node, "get_thresholds") else {}
    type_name = node.type_name
    if source is None:
        plan.skip = "nothing_wired"
        plan.skip_detail = f"input {port!r} of {name} is not connected to any node"
    elif isinstance(node, ScoringDecider):  # BinaryDecider and plugin deciders that expose their scores
        plan.search = BinarySearch(node)
    elif type_name == "QuantileBinaryDecider" or "quantile" in plan.thresholds_before:
        plan.search = QuantileSearch(node, plan.thresholds_before.get("quantile", 0.995))
    else:
        plan.skip = "calibrate_failed"
        plan.skip_detail = f"no calibration method for {type_name}"
    return plan


def _decider_report(
    plan: DeciderPlan, status: str, after: dict[str, float] | None, metrics: dict[str, float]
) -> DeciderCalibration:
    thresholds = {
        k: ThresholdChange(before=v, after=(after or {}).get(k, v)) for k, v in plan.thresholds_before.items()
    }
    return DeciderCalibration(
        name=plan.name,
        class_name=plan.node.type_name,
        status=status,
        skip=plan.skip if status == "skipped" else "none",
        skip_detail=plan.skip_detail if status == "skipped" else "",
        thresholds=thresholds,
        metrics=metrics,
        thresholds_present=bool(plan.thresholds_before),
    )


def _outcome(
    applicable: bool, skip: str, detail: str, frames: int, anomalous: int, deciders: list[DeciderCalibration]
) -> CalibrationOutcome:
    return CalibrationOutcome(
        split="val",
        applicable=applicable,
        phase_skip=skip,
        phase_detail=detail,
        frames=frames,
        anomalous_frames=anomalous,
        deciders=tuple(deciders),
    )


def calibrate(ctx: TrainContext, split: str = "val") -> CalibrationOutcome:
    """Run the calibration; returns its outcome (and emits the calibration hooks)."""
    pipeline = ctx.pipeline
    names = deciders_of(pipeline)
    plans = [plan_decider(pipeline, n) for n in names]
    ctx.emit(
        ProgressEvent(
            status="running",
            stage=split,
            hook="calibration_start",
            split=split,
            message=f"calibrating {len(plans)} decider(s) on the {split} split",
        )
    )

    def finish(outcome: CalibrationOutcome) -> CalibrationOutcome:
        ctx.emit(
            ProgressEvent(
                status="running",
                stage=split,
                hook="calibration_end",
                split=split,
                calibration=outcome,
                message=outcome.phase_detail or "calibration done",
            )
        )
        return outcome

    def skipped_all(reason: str, detail: str) -> list[DeciderCalibration]:
        out = []
        for p in plans:
            if p.skip == "none":
                p.skip, p.skip_detail = "no_report", detail
            out.append(_decider_report(p, "skipped", None, {}))
        return out

    if not plans:
        return finish(_outcome(False, "none", "the pipeline has no deciders to calibrate", 0, 0, []))
    datamodule = ctx.datamodule()
    ids = datamodule.ids(split)
    if not ids:
        detail = f"no {split} split (data.{split}_ids is empty)"
        return finish(_outcome(False, "no_split", detail, 0, 0, skipped_all("no_split", detail)))
    active = [p for p in plans if p.search is not None]
    if not active:
        detail = "no decider can be calibrated: " + "; ".join(p.skip_detail for p in plans)
        return finish(
            _outcome(False, "none", detail, 0, 0, [_decider_report(p, "skipped", None, {}) for p in plans])
        )
    missing_target = [p for p in active if p.target is None]
    if missing_target:
        detail = "the pipeline produces no anomaly mask (a boolean 'mask' output) to calibrate against"
        return finish(_outcome(False, "ambiguous_mask", detail, 0, 0, skipped_all("ambiguous_mask", detail)))

    # Run only what the calibration reads: the deciders' sources and the mask, with their ancestors (one
    # forward per node that is not itself an ancestor of another needed node). Deciders, losses, metrics
    # and visualizers downstream are skipped, and an unwired decider cannot break the pass.
    needed = {p.source[0] for p in active if p.source} | {p.target[0] for p in active if p.target}
    sinks = [
        n for n in pipeline.order if n in needed and not any(n in pipeline.ancestors(m) for m in needed - {n})
    ]
    loader = datamodule.dataloader(split)
    total = len(ids)
    frames = anomalous = 0
    positives = pixels = 0
    pipeline.eval()
    try:
        with torch.no_grad():
            for batch_idx, batch in enumerate(loader):
                ctx.check_cancelled()
                out: dict[str, Any] = {}
                for sink in sinks:
                    out.update(pipeline(batch, Stage.VAL, upto=sink))
                bs = int(batch["cube"].shape[0]) if isinstance(batch.get("cube"), torch.Tensor) else 1
                frame_mask: torch.Tensor | None = None
                for p in active:
                    assert p.target is not None and p.source is not None and p.search is not None
                    target = out.get(f"{p.target[0]}.{p.target[1]}")
                    value = out.get(f"{p.source[0]}.{p.source[1]}")
                    if target is None:
                        continue
                    if frame_mask is None:
                        frame_mask = target.bool()
                    if value is None:
                        continue
                    p.search.add(value, target.bool())
                frames += bs
                if frame_mask is not None:
                    flat = frame_mask.reshape(frame_mask.shape[0], -1)
                    anomalous += int(flat.any(dim=1).sum())
                    positives += int(flat.sum())
                    pixels += flat.numel()
                ctx.emit(
                    ProgressEvent(
                        status="running",
                        stage=split,
                        batch_idx=batch_idx,
                        hook="calibration_progress",
                        split=split,
                        progress=(min(frames, total), total),
                    )
                )
    except CuvisError as exc:
        detail = f"the pipeline failed on the {split} split: {exc.message}"
        return finish(
            _outcome(
                False, "inference_failed", detail, frames, anomalous, skipped_all("inference_failed", detail)
            )
        )
    if pixels == 0:
        detail = f"the {split} split carries no masks to calibrate against"
        return finish(
            _outcome(
                False, "ambiguous_mask", detail, frames, anomalous, skipped_all("ambiguous_mask", detail)
            )
        )
    if positives == 0 or positives == pixels:
        kind = "no anomalous pixel" if positives == 0 else "only anomalous pixels"
        detail = f"the {split} split's masks hold a single class ({kind}); thresholds are left unchanged"
        return finish(
            _outcome(False, "single_class", detail, frames, anomalous, skipped_all("single_class", detail))
        )

    reports: list[DeciderCalibration] = []
    for p in plans:
        if p.search is None:
            reports.append(_decider_report(p, "skipped", None, {}))
            continue
        if p.search.empty:
            p.skip, p.skip_detail = (
                "no_scores",
                f"{p.name} received no {p.input_port!r} values on the {split} split",
            )
            reports.append(_decider_report(p, "skipped", None, {}))
            continue
        before = p.thresholds_before.get(p.search.param, 0.5)
        try:
            after, m_before, m_after = p.search.solve(before)
            assert isinstance(p.node, TunableDecider)  # the deciders' contract; a node breaking it is a bug
            p.node.set_thresholds(**{p.search.param: after})
        except CuvisError as exc:
            p.skip, p.skip_detail = "calibrate_failed", exc.message
            reports.append(_decider_report(p, "skipped", None, {}))
            continue
        metrics = {f"{k}_before": v for k, v in m_before.items()} | {
            f"{k}_after": v for k, v in m_after.items()
        }
        reports.append(_decider_report(p, "calibrated", {p.search.param: after}, metrics))
    done = sum(r.status == "calibrated" for r in reports)
    detail = f"calibrated {done} of {len(reports)} decider(s) on {frames} {split} frame(s) by maximising F1"
    return finish(_outcome(True, "none", detail, frames, anomalous, reports))


def run_calibration(ctx: TrainContext) -> ProgressEvent:
    outcome = calibrate(ctx, "val")
    metrics: dict[str, float] = {}
    for report in outcome.deciders:
        for key, value in report.metrics.items():
            metrics[f"{report.name}/{key}"] = value
    return ProgressEvent(
        status="complete",
        stage="val",
        split="val",
        hook="calibration_end",
        metrics=metrics,
        calibration=outcome,
        message="Calibration complete: " + outcome.phase_detail,
    )
