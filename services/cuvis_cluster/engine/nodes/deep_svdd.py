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


def _require_state(node: Node) -> None:
    """A node whose weights are learned, not fitted: a forward in training mode is what gives it state;
    outside training it refuses to run after a non-strict load left it without its weights."""
    if node.training and torch.is_grad_enabled():
        node.fitted = True
    node.require_fitted()


class _SpectralNet(nn.Module):
    """``fc2(relu(fc1(x)))``: upstream's state layout (``fc1.weight``, ``fc1.bias``, ``fc2.weight``)."""

    def __init__(self, features: int, hidden: int, rep_dim: int, bias: bool) -> None:
        super().__init__()
        self.fc1 = nn.Linear(features, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, rep_dim, bias=False)
        # The same initialisation calls, in the same order, as upstream: under the same seed the
        # freshly built weights are the same.
        nn.init.kaiming_uniform_(self.fc1.weight, a=math.sqrt(5))
        if self.fc1.bias is not None:
            bound = 1.0 / math.sqrt(features)
            nn.init.uniform_(self.fc1.bias, -bound, bound)
        nn.init.xavier_uniform_(self.fc2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class _RandomFourierFeatures(nn.Module):
    """``z_scale · cos(x W + b)``: upstream's layout (buffers ``W`` [C, n], ``b`` [n], ``z_scale`` [])."""

    W: torch.Tensor
    b: torch.Tensor
    z_scale: torch.Tensor

    def __init__(self, channels: int, n_features: int, gamma: float) -> None:
        super().__init__()
        self.register_buffer("W", torch.randn(channels, n_features) * math.sqrt(2.0 * gamma))
        self.register_buffer("b", torch.rand(n_features) * (2.0 * math.pi))
        self.register_buffer("z_scale", torch.tensor(math.sqrt(2.0 / n_features)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.z_scale * torch.cos(x @ self.W + self.b)


# Weights files of earlier versions of this project: old key -> key of the upstream layout.
_LEGACY_LINEAR = {
    "net.0.weight": "net.fc1.weight",
    "net.0.bias": "net.fc1.bias",
    "net.2.weight": "net.fc2.weight",
}
_LEGACY_RBF = {
    "rff_weight": "net.0.W",
    "rff_bias": "net.0.b",
    "net.0.weight": "net.1.fc1.weight",
    "net.0.bias": "net.1.fc1.bias",
    "net.2.weight": "net.1.fc2.weight",
}


@register
class DeepSVDDProjection(Node):
    """Per-pixel MLP ``fc2(relu(fc1(x)))``: ``fc1 = Linear(C, hidden, bias=bias)``,
    ``fc2 = Linear(hidden, rep_dim, bias=False)``; upstream's class and state layout (``net.fc1.*``,
    ``net.fc2.weight``).

    ``kernel='rbf'`` first maps each spectrum to ``n_rff`` random Fourier features
    ``sqrt(2/n_rff)·cos(xW + b)`` with ``W ~ N(0, 2·gamma)`` and ``b ~ U(0, 2π)``, which approximate the RBF
    kernel ``exp(-gamma·‖x-y‖²)`` (gamma defaults to ``1/in_channels``); the layout is then upstream's
    ``net.0.{W,b,z_scale}`` and ``net.1.fc1.*`` / ``net.1.fc2.weight``. Pixels go through the network in
    chunks of ``mlp_forward_batch_size`` (upstream's default, 65536), which bounds peak memory.

    ``bias`` is this project's addition (upstream has no such hparam and always has the hidden bias, which
    is the default here too). ``bias=False`` drops the hidden-layer bias: Deep SVDD theory wants a network
    without bias terms, since with one the optimiser can map every input onto the centre ("hypersphere
    collapse"). A pipeline using ``bias: false`` has no ``net.fc1.bias`` and so does not load strictly into
    upstream's class. Weights files of earlier versions of this project (``net.0.weight`` ...) are read
    through :meth:`upgrade_state_dict`.

    Bounds (refused at build time beyond them): ``in_channels <= 4096``, ``hidden <= 8192``,
    ``rep_dim <= 8192``, ``n_rff <= 65536``.
    """

    INPUTS: ClassVar[dict[str, Port]] = {"data": Port("float32", BHWC)}
    OUTPUTS: ClassVar[dict[str, Port]] = {"embeddings": Port("float32", EMBEDDINGS)}
    CATEGORY = "model"
    TAGS = ("hyperspectral", "anomaly", "embedding", "learnable", "differentiable")
    DESCRIPTION = "Per-pixel projection network of Deep SVDD (optionally on random Fourier features)."
    UPSTREAM_CLASSES = ("cuvis_ai.node.anomaly.deep_svdd.DeepSVDDProjection",)

    def __init__(
        self,
        in_channels: int,
        rep_dim: int = 32,
        hidden: int = 128,
        kernel: str = "linear",
        n_rff: int = 2048,
        gamma: float | None = None,
        mlp_forward_batch_size: int = 65_536,
        bias: bool = True,
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
        # ``None`` (accepted by earlier versions) means upstream's default.
        chunk = (
            65_536
            if mlp_forward_batch_size is None
            else int_param(mlp_forward_batch_size, "mlp_forward_batch_size", 1)
        )
        params: dict[str, Any] = {
            "in_channels": c,
            "rep_dim": d,
            "hidden": h,
            "kernel": kernel,
            "n_rff": r,
            "gamma": g,
            "mlp_forward_batch_size": chunk,
        }
        if not bias:  # only written when it departs from upstream, so saved configs stay upstream's
            params["bias"] = False
        super().__init__(**params)
        self.in_channels, self.rep_dim, self.kernel, self.chunk = c, d, kernel, chunk
        self.net: nn.Module
        if kernel == "rbf":
            rff = _RandomFourierFeatures(c, r, g if g is not None else 1.0 / c)
            self.net = nn.Sequential(rff, _SpectralNet(r, h, d, bias))
        else:
            self.net = _SpectralNet(c, h, d, bias)

    def upgrade_state_dict(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """``state`` with the keys of this project's earlier layout renamed to upstream's."""
        table = _LEGACY_RBF if self.kernel == "rbf" else _LEGACY_LINEAR
        if not any(k in table for k in state):
            return dict(state)
        out = {table.get(k, k): v for k, v in state.items()}
        if self.kernel == "rbf" and "net.0.z_scale" not in out and "net.0.W" in out:
            out["net.0.z_scale"] = torch.tensor(math.sqrt(2.0 / out["net.0.W"].shape[1]))
        return out

    def input_ports(self) -> dict[str, Port]:
        return {"data": with_channels(self.INPUTS["data"], self.in_channels)}

    def output_ports(self) -> dict[str, Port]:
        return {"embeddings": with_channels(self.OUTPUTS["embeddings"], self.rep_dim, "D")}

    def forward(self, **inputs: Any) -> dict[str, Any]:
        x = check_bhwc(self, "data", require_input(self, inputs, "data"), self.in_channels)
        _require_state(self)
        pixels = flatten_pixels(x)
        if pixels.shape[0] > self.chunk:
            out = torch.cat([self.net(part) for part in torch.split(pixels, self.chunk)])
        else:
            out = self.net(pixels)
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
    TRAINABLE_BUFFERS = ("_tracked_center",)
    DESCRIPTION = "Deep SVDD centre: mean embedding, tracked by EMA while training."
    UPSTREAM_CLASSES = ("cuvis_ai.node.anomaly.deep_svdd.DeepSVDDCenterTracker",)

    _tracked_center: torch.Tensor  # [D] buffer (parameter while unfrozen); upstream's name

    def __init__(self, rep_dim: int = 32, alpha: float = 0.1, update_in_eval: bool = False) -> None:
        d = int_param(rep_dim, "rep_dim", minimum=1, maximum=MAX_HIDDEN)
        a = float_param(alpha, "alpha", minimum=0.0, maximum=1.0)
        if a == 0.0:  # upstream's class refuses it too: a pipeline with it would not load there
            raise TypeError("alpha must be in (0, 1], got 0.0; a tiny alpha keeps the centre in place")
        super().__init__(rep_dim=d, alpha=a, update_in_eval=bool(update_in_eval))
        self.rep_dim, self.alpha, self.update_in_eval = d, a, bool(update_in_eval)
        self.register_buffer("_tracked_center", torch.zeros(d))

    @property
    def center(self) -> torch.Tensor:
        """The tracked centre (the ``_tracked_center`` buffer)."""
        return self._tracked_center

    def upgrade_state_dict(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """Earlier versions of this project stored the centre as ``center``."""
        return {("_tracked_center" if k == "center" else k): v for k, v in state.items()}

    def input_ports(self) -> dict[str, Port]:
        return {"embeddings": with_channels(self.INPUTS["embeddings"], self.rep_dim, "D")}

    def output_ports(self) -> dict[str, Port]:
        ports = dict(self.OUTPUTS)
        ports["center"] = Port("float32", (self.rep_dim,))
        return ports

    def fit(self, batches: Iterable[Mapping[str, torch.Tensor]]) -> None:
        moments = pixel_moments(self, batches, "embeddings", self.rep_dim, minimum=1)
        assert moments.mean is not None
        copy_into(self, "_tracked_center", moments.mean)
        self.fitted = True

    def forward(self, **inputs: Any) -> dict[str, Any]:
        z = check_bhwc(self, "embeddings", require_input(self, inputs, "embeddings"), self.rep_dim)
        self.require_fitted()
        if (self.training or self.update_in_eval) and z.numel() > 0:
            batch_mean = flatten_pixels(z.detach()).mean(dim=0)
            with torch.no_grad():
                centre = self._tracked_center
                centre.mul_(1.0 - self.alpha).add_(batch_mean.to(centre), alpha=self.alpha)
        center = self._tracked_center
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
    UPSTREAM_CLASSES = ("cuvis_ai.node.anomaly.deep_svdd.DeepSVDDScores",)

    def __init__(self, name: str | None = None) -> None:
        # Upstream's optional ``name`` is the node's name; the pipeline's node name wins where both exist.
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a string, got {name!r}")
        super().__init__(**({} if name is None else {"name": name}))
        if name:
            self.name = name

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
        "mask": Port(
            "bool", ("B", "H", "W", 1), optional=True, description="True = anomalous pixel", from_batch=False
        ),
    }
    OUTPUTS: ClassVar[dict[str, Port]] = {"loss": Port("float32", ())}
    CATEGORY = "loss"
    TAGS = ("anomaly", "training", "learnable")
    STAGES = EVAL_STAGES
    DESCRIPTION = "Deep SVDD soft-boundary loss with a learnable radius."
    UPSTREAM_CLASSES = ("cuvis_ai.node.losses.DeepSVDDSoftBoundaryLoss",)

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
