"""Normalizers: global min-max, per-channel z-score, per-pixel unit norm."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import torch

from cuvis_cluster.errors import FailedPrecondition

from ._common import (
    BHWC,
    MAX_CHANNELS,
    check_bhwc,
    copy_into,
    float_param,
    int_param,
    iter_port,
    node_label,
    pixel_moments,
    require_input,
    with_channels,
)
from .base import Node, Port, register


@register
class MinMaxNormalizer(Node):
    """``(x - min) / max(max - min, eps)``.

    With ``use_running_stats`` (default) ``min``/``max`` are one global scalar pair over every pixel and
    channel of the train split, fitted by streaming over its batches (buffers ``running_min`` and
    ``running_max``). Without running stats every sample is scaled by its own min and max and nothing
    needs fitting. ``max_initialization_frames`` (upstream's hparam) caps the fit at that many frames
    (images along the batch dim): the batch that crosses the cap is cut, later batches are not read.
    """

    INPUTS: ClassVar[dict[str, Port]] = {"data": Port("float32", BHWC)}
    OUTPUTS: ClassVar[dict[str, Port]] = {"normalized": Port("float32", BHWC)}
    CATEGORY = "transform"
    TAGS = ("hyperspectral", "normalization", "preprocessing")
    TRAINABLE_BUFFERS = ("running_min", "running_max")
    DESCRIPTION = "Min-max scaling with a global running min/max fitted on the train split."
    UPSTREAM_CLASSES = ("cuvis_ai.node.normalization.MinMaxNormalizer",)

    running_min: torch.Tensor  # 0-d buffers (parameters while unfrozen)
    running_max: torch.Tensor

    def __init__(
        self, eps: float = 1e-6, use_running_stats: bool = True, max_initialization_frames: int | None = None
    ) -> None:
        eps = float_param(eps, "eps", minimum=0.0)
        cap = (
            None
            if max_initialization_frames is None
            else int_param(max_initialization_frames, "max_initialization_frames", minimum=1)
        )
        super().__init__(eps=eps, use_running_stats=bool(use_running_stats), max_initialization_frames=cap)
        self.eps = eps
        self.max_initialization_frames = cap
        self.use_running_stats = bool(use_running_stats)
        self.register_buffer("running_min", torch.tensor(0.0))
        self.register_buffer("running_max", torch.tensor(1.0))
        self.fitted = not self.use_running_stats

    def fit(self, batches: Iterable[Mapping[str, torch.Tensor]]) -> None:
        if not self.use_running_stats:
            self.fitted = True
            return
        lo: torch.Tensor | None = None
        hi: torch.Tensor | None = None
        cap, seen = self.max_initialization_frames, 0
        for x in iter_port(self, batches, "data"):
            x = check_bhwc(self, "data", x)
            if cap is not None:
                x = x[: cap - seen]
                seen += x.shape[0]
            if x.numel() > 0:
                b_lo, b_hi = torch.aminmax(x.detach())
                lo = b_lo if lo is None else torch.minimum(lo, b_lo)
                hi = b_hi if hi is None else torch.maximum(hi, b_hi)
            if cap is not None and seen >= cap:
                break
        if lo is None or hi is None:
            raise FailedPrecondition(f"{node_label(self)}: the train split produced no data to fit on")
        copy_into(self, "running_min", lo)
        copy_into(self, "running_max", hi)
        self.fitted = True

    def forward(self, **inputs: Any) -> dict[str, Any]:
        x = check_bhwc(self, "data", require_input(self, inputs, "data"))
        if self.use_running_stats:
            self.require_fitted()
            lo, hi = self.running_min, self.running_max
        else:
            flat = x.reshape(x.shape[0], -1)
            lo = flat.amin(dim=1).view(-1, 1, 1, 1)
            hi = flat.amax(dim=1).view(-1, 1, 1, 1)
        return {"normalized": (x - lo) / torch.clamp(hi - lo, min=self.eps)}


@register
class ZScoreNormalizerGlobal(Node):
    """Per-channel ``(x - mean_c) / zscore_std_c`` with mean and std fitted over the train split.

    As upstream, the stored ``zscore_std`` already includes ``eps`` (``std_c + eps``, std the sample
    standard deviation, ddof=1, accumulated in float64 by streaming moments), so an upstream weights file
    gives upstream's outputs. Upstream's shipped YAML passes an unused ``hidden``; upstream's class takes
    any extra keyword (``**kwargs``) and so does this one: extra keywords are kept in the hparams and have
    no effect, exactly as upstream.
    Bounds: ``1 <= num_channels <= 4096`` (``MAX_CHANNELS``).
    """

    INPUTS: ClassVar[dict[str, Port]] = {"data": Port("float32", BHWC)}
    OUTPUTS: ClassVar[dict[str, Port]] = {"normalized": Port("float32", BHWC)}
    CATEGORY = "transform"
    TAGS = ("hyperspectral", "normalization", "preprocessing")
    TRAINABLE_BUFFERS = ("zscore_mean", "zscore_std")
    DESCRIPTION = "Per-channel z-score with mean/std fitted on the train split."
    UPSTREAM_CLASSES = ("cuvis_ai.node.anomaly.deep_svdd.ZScoreNormalizerGlobal",)

    zscore_mean: torch.Tensor  # [C] buffers (parameters while unfrozen)
    zscore_std: torch.Tensor

    def __init__(self, num_channels: int, eps: float = 1e-8, **ignored: Any) -> None:
        n = int_param(num_channels, "num_channels", minimum=1, maximum=MAX_CHANNELS)
        eps = float_param(eps, "eps", minimum=0.0)
        super().__init__(num_channels=n, eps=eps, **ignored)
        self.num_channels = n
        self.eps = eps
        self.register_buffer("zscore_mean", torch.zeros(n))
        self.register_buffer("zscore_std", torch.ones(n))

    def input_ports(self) -> dict[str, Port]:
        return {"data": with_channels(self.INPUTS["data"], self.num_channels)}

    def output_ports(self) -> dict[str, Port]:
        return {"normalized": with_channels(self.OUTPUTS["normalized"], self.num_channels)}

    def fit(self, batches: Iterable[Mapping[str, torch.Tensor]]) -> None:
        moments = pixel_moments(self, batches, "data", self.num_channels)
        assert moments.mean is not None
        copy_into(self, "zscore_mean", moments.mean)
        copy_into(self, "zscore_std", moments.variance(ddof=1).sqrt() + self.eps)
        self.fitted = True

    def forward(self, **inputs: Any) -> dict[str, Any]:
        x = check_bhwc(self, "data", require_input(self, inputs, "data"), self.num_channels)
        self.require_fitted()
        return {"normalized": (x - self.zscore_mean) / self.zscore_std}


@register
class PerPixelUnitNorm(Node):
    """Per pixel: subtract the spectrum's mean over channels, then divide by the L2 norm of the result
    (floored at ``eps``, as upstream)."""

    INPUTS: ClassVar[dict[str, Port]] = {"data": Port("float32", BHWC)}
    OUTPUTS: ClassVar[dict[str, Port]] = {"normalized": Port("float32", BHWC)}
    CATEGORY = "transform"
    TAGS = ("hyperspectral", "normalization", "preprocessing")
    DESCRIPTION = "Centres each spectrum and scales it to unit L2 norm."
    UPSTREAM_CLASSES = ("cuvis_ai.node.normalization.PerPixelUnitNorm",)

    def __init__(self, eps: float = 1e-8) -> None:
        eps = float_param(eps, "eps", minimum=0.0)
        super().__init__(eps=eps)
        self.eps = eps

    def forward(self, **inputs: Any) -> dict[str, Any]:
        x = check_bhwc(self, "data", require_input(self, inputs, "data"))
        centred = x - x.mean(dim=-1, keepdim=True)
        norm = torch.linalg.vector_norm(centred, dim=-1, keepdim=True)
        return {"normalized": centred / norm.clamp_min(self.eps)}  # upstream's floor, not norm + eps
