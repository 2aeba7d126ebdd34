"""Differentiable band selection."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import torch

from ._common import (
    BHWC,
    MAX_CHANNELS,
    check_bhwc,
    copy_into,
    float_param,
    int_param,
    pixel_moments,
    require_input,
    with_channels,
)
from .base import Node, Port, register

INIT_METHODS = ("uniform", "variance")


@register
class SoftChannelSelector(Node):
    """Temperature softmax over channel logits: ``w = softmax(logits / T) · n_select``; ``selected = x · w``.

    The channel count is kept (unselected channels are scaled towards 0), and ``sum(w) == n_select``. With
    ``hard=True`` the module uses exact top-``n_select`` 0/1 weights in eval mode. The temperature follows
    ``T = max(temperature_min, temperature_init · temperature_decay^epoch)`` through :meth:`on_epoch_start`;
    as upstream, it is a plain attribute (not state): a reloaded node starts again at ``temperature_init``.
    ``init_method='variance'`` sets ``logits = log(var_c + eps)`` from the train split (statistical
    init); ``'uniform'`` starts at 0.
    Bounds: ``1 <= n_select <= input_channels <= 4096`` (``MAX_CHANNELS``).
    """

    INPUTS: ClassVar[dict[str, Port]] = {"data": Port("float32", BHWC)}
    OUTPUTS: ClassVar[dict[str, Port]] = {
        "selected": Port("float32", BHWC),
        "weights": Port("float32", ("C",), description="per-channel weights, summing to n_select"),
    }
    CATEGORY = "transform"
    TAGS = ("hyperspectral", "dim_reduction", "differentiable", "learnable")
    TRAINABLE_BUFFERS = ("channel_logits",)
    DESCRIPTION = "Soft (temperature-softmax) channel selection with a learnable logit per band."
    UPSTREAM_CLASSES = ("cuvis_ai.node.channel_selector.SoftChannelSelector",)

    channel_logits: torch.Tensor  # buffer, or parameter while unfrozen

    def __init__(
        self,
        n_select: int,
        input_channels: int,
        init_method: str = "uniform",
        temperature_init: float = 5.0,
        temperature_min: float = 0.1,
        temperature_decay: float = 0.9,
        hard: bool = False,
        eps: float = 1e-6,
    ) -> None:
        channels = int_param(input_channels, "input_channels", minimum=1, maximum=MAX_CHANNELS)
        k = int_param(n_select, "n_select", minimum=1)
        if k > channels:
            raise TypeError(f"n_select ({k}) exceeds input_channels ({channels})")
        if init_method not in INIT_METHODS:
            raise TypeError(f"init_method must be one of {INIT_METHODS}, got {init_method!r}")
        t_init = float_param(temperature_init, "temperature_init", minimum=1e-12)
        t_min = float_param(temperature_min, "temperature_min", minimum=1e-12)
        decay = float_param(temperature_decay, "temperature_decay", minimum=0.0)
        eps = float_param(eps, "eps", minimum=0.0)
        super().__init__(
            n_select=k,
            input_channels=channels,
            init_method=init_method,
            temperature_init=t_init,
            temperature_min=t_min,
            temperature_decay=decay,
            hard=bool(hard),
            eps=eps,
        )
        self.n_select, self.input_channels, self.init_method = k, channels, init_method
        self.temperature_init, self.temperature_min, self.temperature_decay = t_init, t_min, decay
        self.hard, self.eps = bool(hard), eps
        self.register_buffer("channel_logits", torch.zeros(channels))
        self.temperature = t_init
        self.fitted = init_method == "uniform"

    def input_ports(self) -> dict[str, Port]:
        return {"data": with_channels(self.INPUTS["data"], self.input_channels)}

    def output_ports(self) -> dict[str, Port]:
        return {name: with_channels(port, self.input_channels) for name, port in self.OUTPUTS.items()}

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, *args, **kwargs
    ):
        # Files of earlier versions stored the temperature as a 0-d tensor: adopt it, it is not state.
        key = prefix + "temperature"
        value = state_dict.get(key)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, *args, **kwargs
        )
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            self.temperature = float(value)
            unexpected = args[0] if args else kwargs.get("unexpected_keys")
            if isinstance(unexpected, list) and key in unexpected:
                unexpected.remove(key)

    def fit(self, batches: Iterable[Mapping[str, torch.Tensor]]) -> None:
        if self.init_method != "variance":
            self.fitted = True
            return
        moments = pixel_moments(self, batches, "data", self.input_channels)
        copy_into(self, "channel_logits", torch.log(moments.variance(ddof=1) + self.eps))
        self.fitted = True

    def temperature_at(self, epoch: int) -> float:
        return max(self.temperature_min, self.temperature_init * self.temperature_decay ** max(int(epoch), 0))

    def on_epoch_start(self, epoch: int) -> None:
        self.temperature = self.temperature_at(epoch)

    def channel_weights(self) -> torch.Tensor:
        if self.hard and not self.training:
            top = torch.topk(self.channel_logits.detach(), self.n_select).indices
            return torch.zeros_like(self.channel_logits).index_fill(0, top, 1.0)
        return torch.softmax(self.channel_logits / self.temperature, dim=0) * self.n_select

    def forward(self, **inputs: Any) -> dict[str, Any]:
        x = check_bhwc(self, "data", require_input(self, inputs, "data"), self.input_channels)
        self.require_fitted()
        weights = self.channel_weights()
        return {"selected": x * weights, "weights": weights}
