"""Deep SVDD (one-class deep support vector data description) on per-pixel spectra."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ._common import (
    BHWC,
    MAX_CHANNELS,
    MAX_HIDDEN,
    MAX_RFF,
    SCORE_SHAPE,
    bad_input,
    check_bhwc,
    check_rank,
    copy_into,
    flatten_pixels,
    float_param,
    int_param,
    pixel_moments,
    require_input,
    with_channels,
)
from .base import EVAL_STAGES, Node, Port, register

KERNELS = ("linear", "rbf")
EMBEDDINGS = ("B", "H", "W", "D")


@register
class DeepSVDDProjection(Node):
    """Per-pixel MLP ``Linear(C, hidden, bias=bias) -> ReLU -> Linear(hidden, rep_dim, bias=False)``.

    ``kernel='rbf'`` first maps each spectrum to ``n_rff`` random Fourier features
    ``sqrt(2/n_rff)·cos(xW + b)`` with ``W ~ N(0, 2·gamma)`` and ``b ~ U(0, 2π)``, which approximate the RBF
    kernel ``exp(-gamma·‖x-y‖²)`` (gamma defaults to ``1/in_channels``). ``W`` and ``b`` are fixed buffers
    saved with the weights.

    Deep SVDD needs a network without bias terms: with a bias the optimiser can zero the weights and map
    every input onto the centre (the trivial "hypersphere collapse", loss 0, no detection). So the hidden
    layer has no bias by default (``bias=False``) and the output layer never has one. ``bias=True`` keeps
    the hidden-layer bias of earlier versions: their weights carry ``net.0.bias`` and load strictly only
    into a projection built with ``bias: true`` (a strict load into a bias-free one is refused with
    "unexpected key ... net.0.bias"; a non-strict load drops the bias).

    Bounds (refused at build time beyond them): ``in_channels <= 4096``, ``hidden <= 8192``,
    ``rep_dim <= 8192``, ``n_rff <= 65536``.
    """

    INPUTS: ClassVar[dict[str, Port]] = {"data": Port("float32", BHWC)}
    OUTPUTS: ClassVar[dict[str, Port]] = {"embeddings": Port("float32", EMBEDDINGS)}
    CATEGORY = "model"
    TAGS = ("hyperspectral", "anomaly", "embedding", "learnable", "differentiable")
    DESCRIPTION = "Per-pixel projection network of Deep SVDD (optionally on random Fourier features)."

    rff_weight: torch.Tensor  # [C, n_rff] buffer (kernel='rbf' only)
    rff_bias: torch.Tensor  # [n_rff] buffer (kernel='rbf' only)

    def __init__(
        self,
        in_channels: int,
        rep_dim: int = 32,
        hidden: int = 128,
        kernel: str = "linear",
        n_rff: int = 2048,
        gamma: float | None = None,
        mlp_forward_batch_size: int | None = None,
        bias: bool = False,
    ) -> None:
        if not isinstance(bias, bool):
            raise TypeError(f"bias must be a boolean, got {bias!r}")
        c = int_param(in_channels, "in_channels", minimum=1, maximum=MAX_CHANNELS)
        d = int_param(rep_dim, "rep_dim", minimum=1, maximum=MAX_HIDDEN)
        h = int_param(hidden, "hidden", minimum=1, maximum=MAX_HIDDEN)
        if kernel not in KERNELS:
            raise TypeError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        r = int_param(n_rff, "n_rff", minimum=1, maximum=MAX_RFF)
        g = None if gamma is None else float_param(gamma, "gamma", minimum=1e-12)
        chunk = (
            None
            if mlp_forward_batch_size is None
            else int_param(mlp_forward_batch_size, "mlp_forward_batch_size", 1)
        )
        super().__init__(
            in_channels=c,
            rep_dim=d,
            hidden=h,
            kernel=kernel,
            n_rff=r,
            gamma=g,
            mlp_forward_batch_size=chunk,
            bias=bias,
        )
        self.in_channels, self.rep_dim, self.kernel, self.chunk = c, d, kernel, chunk
        features = c
        if kernel == "rbf":
            g_eff = g if g is not None else 1.0 / c
            self.register_buffer("rff_weight", torch.randn(c, r) * math.sqrt(2.0 * g_eff))
            self.register_buffer("rff_bias", torch.rand(r) * (2.0 * math.pi))
            features = r
        self.net = nn.Sequential(nn.Linear(features, h, bias=bias), nn.ReLU(), nn.Linear(h, d, bias=False))

    def input_ports(self) -> dict[str, Port]:
        return {"data": with_channels(self.INPUTS["data"], self.in_channels)}

    def output_ports(self) -> dict[str, Port]:
        return {"embeddings": with_channels(self.OUTPUTS["embeddings"], self.rep_dim, "D")}

    def _embed(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.kernel == "rbf":
            scale = math.sqrt(2.0 / self.rff_weight.shape[1])
            pixels = scale * torch.cos(pixels @ self.rff_weight + self.rff_bias)
        return self.net(pixels)

    def forward(self, **inputs: Any) -> dict[str, Any]:
        x = check_bhwc(self, "data", require_input(self, inputs, "data"), self.in_channels)
        pixels = flatten_pixels(x)
        if self.chunk and not torch.is_grad_enabled() and pixels.shape[0] > self.chunk:
            out = torch.cat([self._embed(part) for part in torch.split(pixels, self.chunk)])
        else:
            out = self._embed(pixels)
        return {"embeddings": out.reshape(*x.shape[:3], self.rep_dim)}


@register
class DeepSVDDCenterTracker(Node):
    """The hypersphere centre ``c``.

    Statistical init: ``c`` = mean embedding over the train split. In training mode (and in eval mode
    when ``update_in_eval``) every batch moves it by an EMA step ``c <- (1-alpha)·c + alpha·mean(batch)``,
    without gradient. Outputs ``center [D]`` and ``metrics`` ``{"center_norm": ‖c‖}``.
    Bounds: ``1 <= rep_dim <= 8192`` (``MAX_HIDDEN``).
    """

    INPUTS: ClassVar[dict[str, Port]] = {"embeddings": Port("float32", EMBEDDINGS)}
    OUTPUTS: ClassVar[dict[str, Port]] = {
        "center": Port("float32", ("D",)),
        "metrics": Port("float32", (), optional=True, kind="metrics", description="{'center_norm': ‖c‖}"),
    }
    CATEGORY = "model"
    TAGS = ("anomaly", "embedding", "stateful")
    TRAINABLE_BUFFERS = ("center",)
    DESCRIPTION = "Deep SVDD centre: mean embedding, tracked by EMA while training."

    center: torch.Tensor  # [D] buffer (parameter while unfrozen)

    def __init__(self, rep_dim: int = 32, alpha: float = 0.1, update_in_eval: bool = False) -> None:
        d = int_param(rep_dim, "rep_dim", minimum=1, maximum=MAX_HIDDEN)
        a = float_param(alpha, "alpha", minimum=0.0, maximum=1.0)
        super().__init__(rep_dim=d, alpha=a, update_in_eval=bool(update_in_eval))
        self.rep_dim, self.alpha, self.update_in_eval = d, a, bool(update_in_eval)
        self.register_buffer("center", torch.zeros(d))

    def input_ports(self) -> dict[str, Port]:
        return {"embeddings": with_channels(self.INPUTS["embeddings"], self.rep_dim, "D")}

    def output_ports(self) -> dict[str, Port]:
        ports = dict(self.OUTPUTS)
        ports["center"] = Port("float32", (self.rep_dim,))
        return ports

    def fit(self, batches: Iterable[Mapping[str, torch.Tensor]]) -> None:
        moments = pixel_moments(self, batches, "embeddings", self.rep_dim, minimum=1)
        assert moments.mean is not None
        copy_into(self, "center", moments.mean)
        self.fitted = True

    def forward(self, **inputs: Any) -> dict[str, Any]:
        z = check_bhwc(self, "embeddings", require_input(self, inputs, "embeddings"), self.rep_dim)
        self.require_fitted()
        if (self.training or self.update_in_eval) and z.numel() > 0:
            batch_mean = flatten_pixels(z.detach()).mean(dim=0)
            with torch.no_grad():
                self.center.mul_(1.0 - self.alpha).add_(batch_mean.to(self.center), alpha=self.alpha)
        center = self.center
        return {"center": center, "metrics": {"center_norm": torch.linalg.vector_norm(center.detach())}}


def _distances(node: Node, inputs: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    z = check_bhwc(node, "embeddings", require_input(node, inputs, "embeddings"))
    c = require_input(node, inputs, "center")
    check_rank(node, "center", c, 1, "[D]")
    if c.shape[0] != z.shape[-1]:
        raise bad_input(node, "center", f"has {c.shape[0]} dims but the embeddings have {z.shape[-1]}")
    return z, ((z - c) ** 2).sum(dim=-1, keepdim=True)


@register
class DeepSVDDScores(Node):
    """Anomaly score ``‖z - c‖²`` per pixel."""

    INPUTS: ClassVar[dict[str, Port]] = {
        "embeddings": Port("float32", EMBEDDINGS),
        "center": Port("float32", ("D",)),
    }
    OUTPUTS: ClassVar[dict[str, Port]] = {"scores": Port("float32", SCORE_SHAPE)}
    CATEGORY = "model"
    TAGS = ("anomaly", "embedding")
    DESCRIPTION = "Squared distance of each embedding to the Deep SVDD centre."

    def __init__(self) -> None:
        super().__init__()

    def forward(self, **inputs: Any) -> dict[str, Any]:
        _, dist = _distances(self, inputs)
        return {"scores": dist}


@register
class DeepSVDDSoftBoundaryLoss(Node):
    """Soft-boundary Deep SVDD objective ``weight · (R² + mean(relu(‖z-c‖² - R²)) / nu)``.

    The radius is ``R = softplus(r, beta=10)`` of the node's own learnable parameter ``r_unconstrained``.
    Deep SVDD is a one-class method: it should see normal data only. When the optional ``mask`` input
    (``True`` = known anomalous pixel, e.g. the input node's ``mask``) is connected, those pixels are left
    out of the mean, so labelled anomalies in the training frames are not pulled into the sphere; a batch
    with no normal pixel falls back to all pixels. Without ``mask`` every pixel counts.
    """

    INPUTS: ClassVar[dict[str, Port]] = {
        **DeepSVDDScores.INPUTS,
        "mask": Port("bool", ("B", "H", "W", 1), optional=True, description="True = anomalous pixel"),
    }
    OUTPUTS: ClassVar[dict[str, Port]] = {"loss": Port("float32", ())}
    CATEGORY = "loss"
    TAGS = ("anomaly", "training", "learnable")
    STAGES = EVAL_STAGES
    DESCRIPTION = "Deep SVDD soft-boundary loss with a learnable radius."

    def __init__(self, nu: float = 0.05, weight: float = 1.0) -> None:
        nu = float_param(nu, "nu", minimum=1e-12, maximum=1.0)
        w = float_param(weight, "weight")
        super().__init__(nu=nu, weight=w)
        self.nu, self.weight = nu, w
        self.r_unconstrained = nn.Parameter(torch.tensor(0.0))

    def radius(self) -> torch.Tensor:
        return F.softplus(self.r_unconstrained, beta=10.0)

    def forward(self, **inputs: Any) -> dict[str, Any]:
        _, dist = _distances(self, inputs)
        r2 = self.radius() ** 2
        mask = inputs.get("mask")
        if mask is not None:
            keep = ~mask.to(torch.bool).reshape(dist.shape)
            dist = dist[keep] if bool(keep.any()) else dist
        loss = r2 + torch.relu(dist - r2).mean() / self.nu
        return {"loss": self.weight * loss}
