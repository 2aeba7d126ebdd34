"""Score conversions."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import torch

from ._common import (
    StreamingMoments,
    check_rank,
    copy_into,
    float_param,
    iter_port,
    require_input,
)
from .base import Node, Port, register


@register
class ScoreToLogit(Node):
    """``logit = scale · (score - bias)``.

    Statistical init sets ``bias = mean + 2·std`` of the train-split scores (sample std), so that about the
    top few percent of a Gaussian-ish score distribution end up with positive logits; ``scale`` keeps
    ``init_scale``. Without fitting, the init values are used as they are.
    """

    INPUTS: ClassVar[dict[str, Port]] = {"scores": Port("float32", ("B", "H", "W", -1))}
    OUTPUTS: ClassVar[dict[str, Port]] = {"logits": Port("float32", ("B", "H", "W", -1))}
    CATEGORY = "transform"
    TAGS = ("anomaly", "calibration", "postprocessing")
    TRAINABLE_BUFFERS = ("scale", "bias")
    DESCRIPTION = "Affine map from anomaly scores to logits; bias fitted as mean + 2·std."
    UPSTREAM_CLASSES = ("cuvis_ai.node.conversion.ScoreToLogit",)

    scale: torch.Tensor  # 0-d buffers (parameters while unfrozen)
    bias: torch.Tensor

    def __init__(self, init_scale: float = 1.0, init_bias: float = 0.0) -> None:
        scale = float_param(init_scale, "init_scale")
        bias = float_param(init_bias, "init_bias")
        super().__init__(init_scale=scale, init_bias=bias)
        self.register_buffer("scale", torch.tensor(scale))
        self.register_buffer("bias", torch.tensor(bias))
        self.fitted = True  # usable with its init values; fitting refines the bias

    def fit(self, batches: Iterable[Mapping[str, torch.Tensor]]) -> None:
        moments = StreamingMoments(full=False)
        for s in iter_port(self, batches, "scores"):
            check_rank(self, "scores", s, 4, "[B,H,W,1]")
            moments.update(s.detach().reshape(-1, 1))
        moments.require(self)
        assert moments.mean is not None
        bias = moments.mean[0] + 2.0 * moments.variance(ddof=1)[0].sqrt()
        copy_into(self, "bias", bias)
        self.fitted = True

    def forward(self, **inputs: Any) -> dict[str, Any]:
        scores = require_input(self, inputs, "scores")
        check_rank(self, "scores", scores, 4, "[B,H,W,1]")
        if self.training and torch.is_grad_enabled():
            self.fitted = True  # gradient training gives it state
        self.require_fitted()  # False only after a non-strict load that left scale/bias out
        scores = scores if scores.is_floating_point() else scores.to(torch.float32)
        return {"logits": self.scale * (scores - self.bias)}
