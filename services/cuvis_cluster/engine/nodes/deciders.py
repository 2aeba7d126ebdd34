"""Deciders: turn logits or scores into boolean anomaly decisions.

Calibration contract: every decider lists its tunable thresholds in ``THRESHOLD_PARAMS`` and offers
:meth:`get_thresholds` / :meth:`set_thresholds`. Thresholds are persistent buffers, so they are saved
with the weights (loading an older checkpoint without them keeps the current values).
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
            with torch.no_grad():
                getattr(self, name).fill_(v)
            self.params[name] = v

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, *args, **kwargs
    ):
        before = len(missing_keys)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, *args, **kwargs
        )
        for name in self.THRESHOLD_PARAMS:
            if prefix + name in missing_keys[before:]:
                missing_keys.remove(prefix + name)
        # The stored thresholds are the node's params from now on (SavePipeline writes them to YAML).
        for name in self.THRESHOLD_PARAMS:
            if prefix + name in state_dict:
                self.params[name] = float(getattr(self, name))


@register
class BinaryDecider(ThresholdDecider):
    """``decisions = sigmoid(logits) >= threshold``."""

    INPUTS: ClassVar[dict[str, Port]] = {"logits": Port("float32", ("B", "H", "W", 1))}
    OUTPUTS: ClassVar[dict[str, Port]] = {"decisions": DECISIONS}
    THRESHOLD_PARAMS = ("threshold",)
    DESCRIPTION = "Thresholds sigmoid(logits) at a probability."

    threshold: torch.Tensor  # 0-d buffer

    def __init__(self, threshold: float = 0.5) -> None:
        t = float_param(threshold, "threshold", minimum=0.0, maximum=1.0)
        super().__init__(threshold=t)
        self.register_buffer("threshold", torch.tensor(t))

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
    to reduce over, so ``[1, 2]`` gives one threshold per image and channel.
    """

    INPUTS: ClassVar[dict[str, Port]] = {
        "logits": Port("float32", ("B", "H", "W", -1), description="scores or logits")
    }
    OUTPUTS: ClassVar[dict[str, Port]] = {"decisions": Port("bool", ("B", "H", "W", -1))}
    THRESHOLD_PARAMS = ("quantile",)
    DESCRIPTION = "Flags the top (1-q) fraction of each image's scores."

    quantile: torch.Tensor  # 0-d buffer

    def __init__(self, quantile: float = 0.995, reduce_dims: list[int] | None = None) -> None:
        q = float_param(quantile, "quantile", minimum=0.0, maximum=1.0)
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
        super().__init__(quantile=q, reduce_dims=dims)
        self.reduce_dims = dims or [1, 2, 3]
        self.register_buffer("quantile", torch.tensor(q))

    def forward(self, **inputs: Any) -> dict[str, Any]:
        x = require_input(self, inputs, "logits")
        check_rank(self, "logits", x, 4, "[B,H,W,C]")
        x = x if x.is_floating_point() else x.to(torch.float32)
        keep = [d for d in range(4) if d not in self.reduce_dims]
        moved = x.permute(*keep, *self.reduce_dims)
        flat = moved.reshape(*moved.shape[: len(keep)], -1)
        if flat.shape[-1] == 0:
            return {"decisions": torch.zeros_like(x, dtype=torch.bool)}
        thresholds = quantile_last_dim(flat, float(self.quantile))
        view = [x.shape[d] if d in keep else 1 for d in range(4)]
        return {"decisions": x >= thresholds.reshape(view)}
