"""Deciders: turn logits or scores into boolean anomaly decisions.

Calibration contract: every decider lists its tunable thresholds in ``THRESHOLD_PARAMS`` and offers
:meth:`get_thresholds` / :meth:`set_thresholds`. Thresholds are hyper-parameters, as upstream keeps them:
plain attributes mirrored in ``params`` (so SavePipeline writes a calibrated value into the YAML), never
state-dict entries. A weights file of an earlier version that still carries them is read: the stored value
becomes the hparam.
:class:`BinaryDecider` also exposes :meth:`BinaryDecider.calibration_scores`: the per-pixel values that
``threshold`` is compared against (``decisions = calibration_scores >= threshold``), so a calibrator can
search the best threshold directly on them.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from cuvis_cluster.errors import InvalidArgument

from ._common import check_rank, float_param, node_label, require_input
from .base import Node, Port, register

DECISIONS = Port("bool", ("B", "H", "W", 1), description="True = anomalous pixel")


class ThresholdDecider(Node):
    """Shared threshold bookkeeping of the deciders."""

    THRESHOLD_PARAMS: ClassVar[tuple[str, ...]] = ()
    THRESHOLD_RANGE: ClassVar[tuple[float, float]] = (0.0, 1.0)
    CATEGORY = "transform"
    TAGS = ("anomaly", "postprocessing", "calibration")

    def get_thresholds(self) -> dict[str, float]:
        return {name: float(getattr(self, name)) for name in self.THRESHOLD_PARAMS}

    def set_thresholds(self, **values: float) -> None:
        lo, hi = self.THRESHOLD_RANGE
        for name, value in values.items():
            if name not in self.THRESHOLD_PARAMS:
                raise InvalidArgument(f"{node_label(self)} has no threshold {name!r}", field=name)
            v = float(value)
            if not lo <= v <= hi:
                raise InvalidArgument(
                    f"{node_label(self)}: {name} must be in [{lo}, {hi}], got {v}", field=name
                )
            setattr(self, name, v)
            self.params[name] = v

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, *args, **kwargs
    ):
        # Files written before thresholds became hparams carry them as 0-d tensors: adopt the value.
        legacy = {}
        for name in self.THRESHOLD_PARAMS:
            value = state_dict.get(prefix + name)
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                legacy[name] = float(value)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, *args, **kwargs
        )
        for name in legacy:
            if prefix + name in unexpected_keys:
                unexpected_keys.remove(prefix + name)
        if legacy:
            self.set_thresholds(**legacy)


@register
class BinaryDecider(ThresholdDecider):
    """``decisions = sigmoid(logits) >= threshold``."""

    INPUTS: ClassVar[dict[str, Port]] = {"logits": Port("float32", ("B", "H", "W", 1))}
    OUTPUTS: ClassVar[dict[str, Port]] = {"decisions": DECISIONS}
    THRESHOLD_PARAMS = ("threshold",)
    DESCRIPTION = "Thresholds sigmoid(logits) at a probability."
    UPSTREAM_CLASSES = ("cuvis_ai.node.deciders.binary_decider.BinaryDecider",)

    def __init__(self, threshold: float = 0.5) -> None:
        t = float_param(threshold, "threshold", minimum=0.0, maximum=1.0)
        super().__init__(threshold=t)
        self.threshold = t

    def calibration_scores(self, **inputs: Any) -> torch.Tensor:
        logits = require_input(self, inputs, "logits")
        check_rank(self, "logits", logits, 4, "[B,H,W,1]")
        return torch.sigmoid(logits.to(torch.float32))

    def forward(self, **inputs: Any) -> dict[str, Any]:
        return {"decisions": self.calibration_scores(**inputs) >= self.threshold}


def quantile_last_dim(values: torch.Tensor, q: float) -> torch.Tensor:
    """Linear-interpolation quantile along the last dim (numpy's default method), for any size.

    Uses two ``kthvalue`` selections instead of a full sort; ``torch.quantile`` refuses large inputs.
    """
    n = values.shape[-1]
    pos = q * (n - 1)
    lo = int(pos)
    hi = min(lo + 1, n - 1)
    v_lo = values.kthvalue(lo + 1, dim=-1).values
    if hi == lo:
        return v_lo
    v_hi = values.kthvalue(hi + 1, dim=-1).values
    return v_lo + (pos - lo) * (v_hi - v_lo)


@register
class QuantileBinaryDecider(ThresholdDecider):
    """``decisions = x >= quantile_q(x)``, the quantile taken per image.

    By default the quantile runs over all non-batch dims; ``reduce_dims`` (e.g. ``[1, 2]``) picks the dims
    to reduce over, so ``[1, 2]`` gives one threshold per image and channel. A ``threshold`` hparam, which
    upstream's class takes through its keyword arguments and writes into saved pipelines, is kept (so that
    it is written back) and has no effect, as upstream: the quantile decides.
    """

    INPUTS: ClassVar[dict[str, Port]] = {
        "logits": Port("float32", ("B", "H", "W", -1), description="scores or logits")
    }
    OUTPUTS: ClassVar[dict[str, Port]] = {"decisions": Port("bool", ("B", "H", "W", -1))}
    THRESHOLD_PARAMS = ("quantile",)
    DESCRIPTION = "Flags the top (1-q) fraction of each image's scores."
    UPSTREAM_CLASSES = ("cuvis_ai.node.deciders.binary_decider.QuantileBinaryDecider",)

    def __init__(
        self, quantile: float = 0.995, reduce_dims: list[int] | None = None, threshold: float | None = None
    ) -> None:
        q = float_param(quantile, "quantile", minimum=0.0, maximum=1.0)
        kept = {} if threshold is None else {"threshold": float_param(threshold, "threshold")}
        dims = None
        if reduce_dims is not None:
            try:
                dims = sorted({int(d) % 4 for d in reduce_dims})
            except (TypeError, ValueError):
                raise TypeError(
                    f"reduce_dims must be a list of dims among 1..3, got {reduce_dims!r}"
                ) from None
            if not dims or 0 in dims:
                raise TypeError(
                    f"reduce_dims must be a non-empty list of dims among 1..3, got {reduce_dims!r}"
                )
        super().__init__(quantile=q, reduce_dims=dims, **kept)
        self.reduce_dims = dims or [1, 2, 3]
        self.quantile = q

    def forward(self, **inputs: Any) -> dict[str, Any]:
        x = require_input(self, inputs, "logits")
        check_rank(self, "logits", x, 4, "[B,H,W,C]")
        x = x if x.is_floating_point() else x.to(torch.float32)
        keep = [d for d in range(4) if d not in self.reduce_dims]
        moved = x.permute(*keep, *self.reduce_dims)
        flat = moved.reshape(*moved.shape[: len(keep)], -1)
        if flat.shape[-1] == 0:
            return {"decisions": torch.zeros_like(x, dtype=torch.bool)}
        thresholds = quantile_last_dim(flat, self.quantile)
        view = [x.shape[d] if d in keep else 1 for d in range(4)]
        return {"decisions": x >= thresholds.reshape(view)}
