"""Loss nodes. They run in the TRAIN, VAL and TEST stages only and output a 0-d ``loss`` tensor."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ._common import bad_input, check_rank, float_param, require_input
from .base import EVAL_STAGES, Node, Port, register

REDUCTIONS = ("mean", "sum")
LOSS = Port("float32", (), description="0-d loss")
WEIGHTS = Port("float32", ("C",), description="channel selector weights")


class LossNode(Node):
    CATEGORY = "loss"
    TAGS: ClassVar[tuple[str, ...]] = ("training",)
    STAGES = EVAL_STAGES
    OUTPUTS: ClassVar[dict[str, Port]] = {"loss": LOSS}


@register
class AnomalyBCEWithLogits(LossNode):
    """``weight · BCEWithLogits(predictions, targets)``; ``pos_weight`` up-weights the rare anomalies."""

    INPUTS: ClassVar[dict[str, Port]] = {
        "predictions": Port("float32", ("B", "H", "W", 1), description="logits"),
        "targets": Port("bool", ("B", "H", "W", 1), description="anomaly mask"),
    }
    TAGS = ("anomaly", "training")
    DESCRIPTION = "Binary cross-entropy on logits against the anomaly mask."
    UPSTREAM_CLASSES = ("cuvis_ai.node.losses.AnomalyBCEWithLogits",)

    def __init__(self, weight: float = 1.0, pos_weight: float | None = None, reduction: str = "mean") -> None:
        w = float_param(weight, "weight")
        pw = None if pos_weight is None else float_param(pos_weight, "pos_weight", minimum=0.0)
        if reduction not in REDUCTIONS:
            raise TypeError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        super().__init__(weight=w, pos_weight=pw, reduction=reduction)
        self.weight, self.pos_weight, self.reduction = w, pw, reduction

    def forward(self, **inputs: Any) -> dict[str, Any]:
        pred = require_input(self, inputs, "predictions")
        target = require_input(self, inputs, "targets")
        check_rank(self, "predictions", pred, 4, "[B,H,W,1]")
        if target.dim() == 3:
            target = target.unsqueeze(-1)
        if target.shape != pred.shape:
            raise bad_input(
                self, "targets", f"has shape {tuple(target.shape)}, predictions {tuple(pred.shape)}"
            )
        pos_weight = None
        if self.pos_weight is not None:
            pos_weight = torch.tensor(self.pos_weight, dtype=pred.dtype, device=pred.device)
        loss = F.binary_cross_entropy_with_logits(
            pred, target.to(pred.dtype), pos_weight=pos_weight, reduction=self.reduction
        )
        return {"loss": self.weight * loss}


def _weights(node: Node, inputs: dict[str, Any]) -> torch.Tensor:
    w = require_input(node, inputs, "weights")
    check_rank(node, "weights", w, 1, "[C]")
    return w


@register
class SelectorEntropyRegularizer(LossNode):
    """Entropy of the normalised selector weights ``p = w / Σw``, ``H = -Σ p·log(p + eps)``.

    The loss is ``weight · (-H)``: with a positive weight, minimising it maximises the entropy (spreads the
    weights out). With ``target_entropy`` set it is ``weight · (H - target)²`` instead.
    """

    INPUTS: ClassVar[dict[str, Port]] = {"weights": WEIGHTS}
    TAGS = ("training", "dim_reduction")
    DESCRIPTION = "Entropy regulariser on the channel-selector weights."
    UPSTREAM_CLASSES = ("cuvis_ai.node.losses.SelectorEntropyRegularizer",)

    def __init__(self, weight: float = 0.01, target_entropy: float | None = None, eps: float = 1e-6) -> None:
        w = float_param(weight, "weight")
        target = (
            None if target_entropy is None else float_param(target_entropy, "target_entropy", minimum=0.0)
        )
        e = float_param(eps, "eps", minimum=0.0)
        super().__init__(weight=w, target_entropy=target, eps=e)
        self.weight, self.target_entropy, self.eps = w, target, e

    def entropy(self, w: torch.Tensor) -> torch.Tensor:
        p = w / (w.sum() + self.eps)
        return -(p * torch.log(p + self.eps)).sum()

    def forward(self, **inputs: Any) -> dict[str, Any]:
        h = self.entropy(_weights(self, inputs))
        if self.target_entropy is None:
            return {"loss": self.weight * (-h)}
        return {"loss": self.weight * (h - self.target_entropy) ** 2}


@register
class SelectorDiversityRegularizer(LossNode):
    """``weight · (-var(w))`` (population variance, as upstream): minimising it pushes the weights apart."""

    INPUTS: ClassVar[dict[str, Port]] = {"weights": WEIGHTS}
    TAGS = ("training", "dim_reduction")
    DESCRIPTION = "Diversity regulariser on the channel-selector weights."
    UPSTREAM_CLASSES = ("cuvis_ai.node.losses.SelectorDiversityRegularizer",)

    def __init__(self, weight: float = 0.01) -> None:
        w = float_param(weight, "weight")
        super().__init__(weight=w)
        self.weight = w

    def forward(self, **inputs: Any) -> dict[str, Any]:
        w = _weights(self, inputs)
        var = w.var(correction=0)  # population variance, as upstream (0 for one weight)
        return {"loss": self.weight * (-var)}
