"""RX (Reed-Xiaoli) anomaly detectors: Mahalanobis distance of each pixel spectrum to a background model."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from ._common import (
    BHWC,
    MAX_CHANNELS,
    SCORE_SHAPE,
    check_bhwc,
    copy_into,
    flatten_pixels,
    float_param,
    int_param,
    pixel_moments,
    require_input,
    stat_dtype,
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
    positive_definite = bool((info == 0).all())
    inv = torch.cholesky_inverse(chol) if positive_definite else torch.linalg.pinv(sym, hermitian=True)
    return inv.to(cov.dtype)


def mahalanobis(centred: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """``dᵀ Σ⁻¹ d`` for every row of ``centred`` [..., N, C] with ``inverse`` [..., C, C] -> [..., N].

    One matmul over all pixels; no per-pixel [C, C] tensors are formed.
    """
    return torch.einsum("...nc,...nc->...n", centred @ inverse, centred)


@register
class RXGlobal(Node):
    """Global RX detector: ``(x-μ)ᵀ Σ⁻¹ (x-μ)`` with μ and Σ fitted over the whole train split.

    Fit streams over the train batches, merging per-batch means and centred scatter matrices in float64
    (Chan/Welford). The stored ``cov`` is the sample covariance plus ``eps·I``; ``cov_inv`` caches its
    inverse. The buffers ``mu``, ``cov`` and ``cov_inv`` are what checkpoints hold, frozen or not.

    Gradient training (``unfreeze()``): raw covariance entries are tiny on normalised data (1e-4..1e-2),
    so an optimiser step of ``lr`` on them (Adam's steps are about ``lr`` whatever the gradient scale)
    would wreck the model. Unfrozen, the node therefore learns unit-scale offsets instead:

    * ``mu = mu0 + std ⊙ mu_delta``, with ``std = sqrt(diag(cov0))``;
    * ``cov = D L Lᵀ D`` with ``D = diag(std)`` and ``L = L0 + tril(chol_delta)``, where ``L0`` is the
      Cholesky factor of the fitted correlation matrix. ``cov`` stays symmetric positive definite and
      ``cov_inv = D⁻¹ (L Lᵀ)⁻¹ D⁻¹`` is computed from the same factor, so the two never disagree.

    ``mu_delta`` and ``chol_delta`` are the trainable parameters (zero at unfreeze). The effective
    ``mu``/``cov``/``cov_inv`` are written back into the buffers at every forward and are what
    ``state_dict()`` reports (the offsets never appear in checkpoints); loading a checkpoint into an
    unfrozen node re-bases the offsets on the loaded values. ``freeze()`` bakes them in and drops them.

    Bounds: ``1 <= num_channels <= 4096`` (``MAX_CHANNELS``); larger values are refused at build time.
    """

    INPUTS: ClassVar[dict[str, Port]] = {"data": Port("float32", BHWC)}
    OUTPUTS: ClassVar[dict[str, Port]] = {
        "scores": Port("float32", SCORE_SHAPE, description="Mahalanobis distance²")
    }
    CATEGORY = "model"
    TAGS = ("hyperspectral", "anomaly", "stateful")
    TRAINABLE_BUFFERS = ("mu", "cov", "cov_inv")
    DESCRIPTION = "Global RX anomaly detector (Mahalanobis distance to the train-split background)."
    UPSTREAM_CLASSES = ("cuvis_ai.node.anomaly.rx_detector.RXGlobal",)
    _OFFSETS = ("mu_delta", "chol_delta")
    _BASES = ("_mu0", "_std", "_chol0")

    # Registered buffers (and, while unfrozen, the offset parameters and their bases).
    mu: torch.Tensor
    cov: torch.Tensor
    cov_inv: torch.Tensor
    mu_delta: torch.Tensor
    chol_delta: torch.Tensor
    _mu0: torch.Tensor
    _std: torch.Tensor
    _chol0: torch.Tensor

    def __init__(self, num_channels: int, eps: float = 1e-6, cache_inverse: bool = True) -> None:
        n = int_param(num_channels, "num_channels", minimum=1, maximum=MAX_CHANNELS)
        eps = float_param(eps, "eps", minimum=0.0)
        super().__init__(num_channels=n, eps=eps, cache_inverse=bool(cache_inverse))
        self.num_channels = n
        self.eps = eps
        self.cache_inverse = bool(cache_inverse)
        self.register_buffer("mu", torch.zeros(n))
        self.register_buffer("cov", torch.eye(n))
        self.register_buffer("cov_inv", torch.eye(n))
        self.register_state_dict_post_hook(RXGlobal._report_effective_state)

    def input_ports(self) -> dict[str, Port]:
        return {"data": with_channels(self.INPUTS["data"], self.num_channels)}

    def upgrade_state_dict(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """Upstream, fitted with ``cache_inverse=False``, stores an empty ``cov_inv``: derive it from
        ``cov``."""
        out = dict(state)
        cov, inv = out.get("cov"), out.get("cov_inv")
        if (
            isinstance(cov, torch.Tensor)
            and isinstance(inv, torch.Tensor)
            and inv.numel() == 0
            and cov.dim() == 2
        ):
            out["cov_inv"] = torch.linalg.pinv(cov.to(torch.float64), hermitian=True).to(cov.dtype)
        return out

    def fit(self, batches: Iterable[Mapping[str, torch.Tensor]]) -> None:
        moments = pixel_moments(self, batches, "data", self.num_channels, full=True)
        assert moments.mean is not None
        cov = moments.covariance(ddof=1)
        cov = cov + self.eps * torch.eye(self.num_channels, dtype=cov.dtype, device=cov.device)
        copy_into(self, "mu", moments.mean)
        copy_into(self, "cov", cov)
        copy_into(self, "cov_inv", torch.linalg.pinv(cov, hermitian=True))
        self.fitted = True
        if self.unfrozen:
            self._rebase()

    # -- gradient training -------------------------------------------------------------------------
    @property
    def unfrozen(self) -> bool:
        return "mu_delta" in self._parameters

    def unfreeze(self) -> None:
        if not self.unfrozen:
            device = self.mu.device
            for name in self._OFFSETS:
                shape = (self.num_channels,) if name == "mu_delta" else (self.num_channels,) * 2
                self.register_parameter(name, nn.Parameter(torch.zeros(shape, device=device)))
            for name in self._BASES:
                self.register_buffer(name, torch.zeros(0, device=device), persistent=False)
            self._rebase()
        for param in self.parameters():
            param.requires_grad_(True)

    def freeze(self) -> None:
        if self.unfrozen:
            self._sync_buffers()
            for name in self._OFFSETS:
                del self._parameters[name]
            for name in self._BASES:
                del self._buffers[name]
        super().freeze()

    def _rebase(self) -> None:
        """Make the current buffers the base of zero offsets."""
        with torch.no_grad():
            work = self.cov.detach().to(stat_dtype(self.cov.device))
            std = torch.sqrt(torch.clamp(torch.diagonal(work), min=1e-24))
            corr = work / torch.outer(std, std)
            corr = 0.5 * (corr + corr.T)
            chol, info = torch.linalg.cholesky_ex(corr)
            if int(info) != 0:  # not positive definite: nudge the diagonal
                chol = torch.linalg.cholesky(
                    corr + 1e-6 * torch.eye(corr.shape[0], dtype=corr.dtype, device=corr.device)
                )
            self._buffers["_mu0"] = self.mu.detach().clone()
            self._buffers["_std"] = std.to(self.mu.dtype)
            self._buffers["_chol0"] = chol.to(self.mu.dtype)
            for name in self._OFFSETS:
                getattr(self, name).zero_()

    def _effective(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mu, cov, cov_inv) from the base and the offsets, differentiable in the offsets."""
        std = self._std
        factor = self._chol0 + torch.tril(self.chol_delta)
        mu = self._mu0 + std * self.mu_delta
        cov = (factor @ factor.T) * torch.outer(std, std)
        inv = torch.cholesky_inverse(factor.to(stat_dtype(factor.device))).to(factor.dtype)
        inv = inv / torch.outer(std, std)
        return mu, cov, inv

    def _sync_buffers(self) -> None:
        with torch.no_grad():
            mu, cov, inv = self._effective()
            self.mu.copy_(mu)
            self.cov.copy_(cov)
            self.cov_inv.copy_(inv)

    @staticmethod
    def _report_effective_state(
        module: RXGlobal, state_dict: dict, prefix: str, local_metadata: dict
    ) -> None:
        if not module.unfrozen:
            return
        with torch.no_grad():
            mu, cov, inv = module._effective()
        state_dict[prefix + "mu"] = mu.detach().clone()
        state_dict[prefix + "cov"] = cov.detach().clone()
        state_dict[prefix + "cov_inv"] = inv.detach().clone()
        for name in module._OFFSETS:
            state_dict.pop(prefix + name, None)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, *args, **kwargs
    ):
        before = len(missing_keys)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, *args, **kwargs
        )
        for name in self._OFFSETS:
            if prefix + name in missing_keys[before:]:
                missing_keys.remove(prefix + name)
        if self.unfrozen and prefix + "cov" in state_dict:
            self._rebase()

    # -- scoring -----------------------------------------------------------------------------------
    def current_statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, inverse) used by forward."""
        if self.unfrozen:
            mu, cov, inv = self._effective()
            with torch.no_grad():  # keep the buffers current (what inspection and checkpoints see)
                self.mu.copy_(mu)
                self.cov.copy_(cov)
                self.cov_inv.copy_(inv)
            return mu, inv
        if self.cov.requires_grad:  # TRAINABLE_BUFFERS made parameters by other means: derive the inverse
            inv = regularized_inverse(self.cov)
            with torch.no_grad():
                self.cov_inv.copy_(inv.detach())
            return self.mu, inv
        if self.cache_inverse:
            return self.mu, self.cov_inv
        return self.mu, regularized_inverse(self.cov)

    def forward(self, **inputs: Any) -> dict[str, Any]:
        x = check_bhwc(self, "data", require_input(self, inputs, "data"), self.num_channels)
        self.require_fitted()
        mu, inverse = self.current_statistics()
        scores = mahalanobis(flatten_pixels(x) - mu, inverse)
        return {"scores": scores.reshape(*x.shape[:3], 1)}


@register
class RXPerBatch(Node):
    """RX with μ and Σ estimated from each image itself (no training)."""

    INPUTS: ClassVar[dict[str, Port]] = {"data": Port("float32", BHWC)}
    OUTPUTS: ClassVar[dict[str, Port]] = {"scores": Port("float32", SCORE_SHAPE)}
    CATEGORY = "model"
    TAGS = ("hyperspectral", "anomaly")
    DESCRIPTION = "Local RX: Mahalanobis distance to each image's own mean and covariance."
    UPSTREAM_CLASSES = ("cuvis_ai.node.anomaly.rx_detector.RXPerBatch",)

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
