"""RX (Reed-Xiaoli) anomaly detectors: Mahalanobis distance of each pixel spectrum to a background model."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import torch

from ._common import (
    BHWC,
    SCORE_SHAPE,
    StreamingMoments,
    check_bhwc,
    copy_into,
    flatten_pixels,
    float_param,
    int_param,
    iter_port,
    require_input,
    with_channels,
)
from .base import Node, Port, register


def regularized_inverse(cov: torch.Tensor) -> torch.Tensor:
    """Inverse of a (batch of) symmetric covariance matrices, differentiable.

    Symmetrises first, then inverts through a Cholesky factorisation in float64; matrices that are not
    positive definite (possible while gradient training moves ``cov``) fall back to the pseudo-inverse.
    """
    work = cov.to(torch.float64) if cov.device.type != "mps" else cov
    sym = 0.5 * (work + work.transpose(-1, -2))
    chol, info = torch.linalg.cholesky_ex(sym)
    if bool((info == 0).all()):
        inv = torch.cholesky_inverse(chol)
    else:
        inv = torch.linalg.pinv(sym, hermitian=True)
    return inv.to(cov.dtype)


def mahalanobis(centred: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """``dᵀ Σ⁻¹ d`` for every row of ``centred`` [..., N, C] with ``inverse`` [..., C, C] -> [..., N].

    One matmul over all pixels; no per-pixel [C, C] tensors are formed.
    """
    return ((centred @ inverse) * centred).sum(dim=-1)


@register
class RXGlobal(Node):
    """Global RX detector: ``(x-μ)ᵀ Σ⁻¹ (x-μ)`` with μ and Σ fitted over the whole train split.

    Fit streams over the train batches, merging per-batch means and centred scatter matrices in float64
    (Chan/Welford). The stored ``cov`` is the sample covariance plus ``eps·I``; ``cov_inv`` caches its inverse.

    Gradient training: when ``unfreeze()`` has turned ``cov`` into a parameter, every forward derives the
    inverse from ``cov`` (differentiably, Cholesky with a pseudo-inverse fallback), and writes it back into
    ``cov_inv`` without gradient. ``cov_inv`` is therefore a derived mirror of ``cov``: it receives no
    gradient of its own, and after ``freeze()`` it matches the trained ``cov`` exactly.
    """

    INPUTS: ClassVar[dict[str, Port]] = {"data": Port("float32", BHWC)}
    OUTPUTS: ClassVar[dict[str, Port]] = {"scores": Port("float32", SCORE_SHAPE, description="Mahalanobis distance²")}
    CATEGORY = "model"
    TAGS = ("hyperspectral", "anomaly", "stateful")
    TRAINABLE_BUFFERS = ("mu", "cov", "cov_inv")
    DESCRIPTION = "Global RX anomaly detector (Mahalanobis distance to the train-split background)."

    def __init__(self, num_channels: int, eps: float = 1e-6, cache_inverse: bool = True) -> None:
        n = int_param(num_channels, "num_channels", minimum=1)
        eps = float_param(eps, "eps", minimum=0.0)
        super().__init__(num_channels=n, eps=eps, cache_inverse=bool(cache_inverse))
        self.num_channels = n
        self.eps = eps
        self.cache_inverse = bool(cache_inverse)
        self.register_buffer("mu", torch.zeros(n))
        self.register_buffer("cov", torch.eye(n))
        self.register_buffer("cov_inv", torch.eye(n))

    def input_ports(self) -> dict[str, Port]:
        return {"data": with_channels(self.INPUTS["data"], self.num_channels)}

    def fit(self, batches: Iterable[Mapping[str, torch.Tensor]]) -> None:
        moments = StreamingMoments(full=True)
        for x in iter_port(self, batches, "data"):
            x = check_bhwc(self, "data", x, self.num_channels)
            moments.update(flatten_pixels(x.detach()))
        moments.require(self)
        assert moments.mean is not None
        cov = moments.covariance(ddof=1)
        cov = cov + self.eps * torch.eye(self.num_channels, dtype=cov.dtype, device=cov.device)
        copy_into(self, "mu", moments.mean)
        copy_into(self, "cov", cov)
        copy_into(self, "cov_inv", torch.linalg.pinv(cov, hermitian=True))
        self.fitted = True

    def current_inverse(self) -> torch.Tensor:
        """The inverse used by forward (see the class docstring for the gradient-training rule)."""
        if self.cov.requires_grad:
            inv = regularized_inverse(self.cov)
            with torch.no_grad():
                self.cov_inv.copy_(inv.detach())
            return inv
        if self.cache_inverse:
            return self.cov_inv
        return regularized_inverse(self.cov)

    def forward(self, **inputs: Any) -> dict[str, Any]:
        x = check_bhwc(self, "data", require_input(self, inputs, "data"), self.num_channels)
        self.require_fitted()
        inverse = self.current_inverse()
        centred = flatten_pixels(x) - self.mu
        scores = mahalanobis(centred, inverse)
        return {"scores": scores.reshape(*x.shape[:3], 1)}


@register
class RXPerBatch(Node):
    """RX with μ and Σ estimated from each image itself (no training)."""

    INPUTS: ClassVar[dict[str, Port]] = {"data": Port("float32", BHWC)}
    OUTPUTS: ClassVar[dict[str, Port]] = {"scores": Port("float32", SCORE_SHAPE)}
    CATEGORY = "model"
    TAGS = ("hyperspectral", "anomaly")
    DESCRIPTION = "Local RX: Mahalanobis distance to each image's own mean and covariance."

    def __init__(self, eps: float = 1e-6) -> None:
        eps = float_param(eps, "eps", minimum=0.0)
        super().__init__(eps=eps)
        self.eps = eps

    def forward(self, **inputs: Any) -> dict[str, Any]:
        x = check_bhwc(self, "data", require_input(self, inputs, "data"))
        b, h, w, c = x.shape
        pixels = x.reshape(b, h * w, c)
        centred = pixels - pixels.mean(dim=1, keepdim=True)
        wide = centred.to(torch.float64) if x.device.type != "mps" else centred
        cov = wide.transpose(1, 2) @ wide / max(h * w - 1, 1)
        cov = cov + self.eps * torch.eye(c, dtype=cov.dtype, device=cov.device)
        inverse = regularized_inverse(cov).to(x.dtype)
        return {"scores": mahalanobis(centred, inverse).reshape(b, h, w, 1)}
