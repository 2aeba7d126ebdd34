"""Helpers shared by the node families: input checks, pixel flattening, streaming statistics.

Nothing here loops over pixels. Statistics are accumulated in float64 on the data's own device (MPS has
no float64, so it falls back to float32 there).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from typing import Any

import torch

from cuvis_cluster.errors import FailedPrecondition, InvalidArgument

from .base import Node, Port

BHWC = ("B", "H", "W", "C")
SCORE_SHAPE = ("B", "H", "W", 1)


def node_label(node: Node) -> str:
    return f"node {node.name or node.type_name!r} ({node.type_name})"


def bad_input(node: Node, port: str, problem: str) -> InvalidArgument:
    """An InvalidArgument that names the node and the input port (``field`` is ``node.port``)."""
    return InvalidArgument(
        f"{node_label(node)}: input {port!r} {problem}", field=f"{node.name or node.type_name}.{port}"
    )


def require_input(node: Node, inputs: Mapping[str, Any], port: str) -> torch.Tensor:
    value = inputs.get(port)
    if value is None:
        raise bad_input(node, port, "is required but missing")
    if not isinstance(value, torch.Tensor):
        raise bad_input(node, port, f"must be a tensor, got {type(value).__name__}")
    return value


def check_rank(node: Node, port: str, x: torch.Tensor, rank: int, layout: str = "") -> None:
    if x.dim() != rank:
        what = f" {layout}" if layout else ""
        raise bad_input(node, port, f"must have rank {rank}{what}, got shape {tuple(x.shape)}")


def check_bhwc(node: Node, port: str, x: torch.Tensor, channels: int | None = None) -> torch.Tensor:
    """Validate a [B,H,W,C] tensor (optionally its channel count) and return it as floating point."""
    check_rank(node, port, x, 4, "[B,H,W,C]")
    if channels is not None and x.shape[-1] != channels:
        raise bad_input(node, port, f"has {x.shape[-1]} channels, expected {channels}")
    return as_float(x)


def as_float(x: torch.Tensor) -> torch.Tensor:
    return x if x.is_floating_point() else x.to(torch.float32)


def flatten_pixels(x: torch.Tensor) -> torch.Tensor:
    """[B,H,W,C] -> [B*H*W, C] (a view when possible)."""
    return x.reshape(-1, x.shape[-1])


def stat_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def with_channels(port: Port, channels: int | None, symbol: str = "C") -> Port:
    """The port with its symbolic channel dimension replaced by a concrete size."""
    if channels is None:
        return port
    return replace(port, shape=tuple(channels if d == symbol else d for d in port.shape))


def iter_port(node: Node, batches: Iterable[Mapping[str, Any]], port: str) -> Iterator[torch.Tensor]:
    """The tensors of one input port across the fitting batches."""
    for batch in batches:
        yield require_input(node, batch, port)


class StreamingMoments:
    """Mean and (co)variance over a stream of [N, C] sample blocks.

    Each block contributes its own mean and centred scatter (``Xcᵀ Xc`` via one matmul, never per-sample
    outer products); blocks are merged with Chan et al.'s pairwise update, which is the batched form of
    Welford's algorithm and stays accurate when the mean is large relative to the spread.
    """

    def __init__(self, full: bool = True) -> None:
        self.full = full
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None  # [C,C] scatter when full, [C] sum of squares otherwise

    def update(self, samples: torch.Tensor) -> None:
        if samples.dim() != 2:
            raise ValueError("StreamingMoments.update expects [N, C]")
        n_b = samples.shape[0]
        if n_b == 0:
            return
        x = samples.to(stat_dtype(samples.device))
        mean_b = x.mean(dim=0)
        xc = x - mean_b
        m2_b = xc.T @ xc if self.full else (xc * xc).sum(dim=0)
        if self.mean is None or self.m2 is None:
            self.count, self.mean, self.m2 = n_b, mean_b, m2_b
            return
        if mean_b.shape != self.mean.shape:
            raise InvalidArgument(
                f"channel count changed between batches: {self.mean.shape[0]} then {mean_b.shape[0]}"
            )
        mean_b = mean_b.to(self.mean.device)
        m2_b = m2_b.to(self.m2.device)
        n_a = self.count
        n = n_a + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        correction = torch.outer(delta, delta) if self.full else delta * delta
        self.m2 = self.m2 + m2_b + correction * (n_a * n_b / n)
        self.count = n

    def require(self, node: Node, minimum: int = 2) -> None:
        if self.count < minimum:
            raise FailedPrecondition(
                f"{node_label(node)}: statistical training saw {self.count} samples, needs at least "
                f"{minimum}; "
                "check that the train split (data.train_ids) is not empty"
            )

    def covariance(self, ddof: int = 1) -> torch.Tensor:
        assert self.m2 is not None
        return self.m2 / max(self.count - ddof, 1)

    def variance(self, ddof: int = 1) -> torch.Tensor:
        assert self.m2 is not None
        var = self.m2 if not self.full else torch.diagonal(self.m2)
        return var / max(self.count - ddof, 1)


def pixel_moments(
    node: Node,
    batches: Iterable[Mapping[str, Any]],
    port: str,
    channels: int | None,
    *,
    full: bool = False,
    minimum: int = 2,
) -> StreamingMoments:
    """Moments of the pixels of a BHWC input ``port`` over the fitting batches (at least ``minimum``)."""
    moments = StreamingMoments(full=full)
    for x in iter_port(node, batches, port):
        x = check_bhwc(node, port, x, channels)
        moments.update(flatten_pixels(x.detach()))
    moments.require(node, minimum)
    return moments


def copy_into(node: Node, name: str, value: torch.Tensor) -> None:
    """Overwrite a buffer or parameter in place, keeping its dtype, device and kind."""
    target = getattr(node, name)
    with torch.no_grad():
        if target.shape != value.shape:
            # A fresh fit may change a shape fixed at construction (a parameter cannot be resized in place).
            if isinstance(target, torch.nn.Parameter):
                setattr(
                    node,
                    name,
                    torch.nn.Parameter(value.detach().to(target), requires_grad=target.requires_grad),
                )
            else:
                node._buffers[name] = value.detach().to(target)
            return
        target.copy_(value.detach().to(target))


# Upper bounds on size hyper-parameters: a client-supplied config must not be able to make the worker
# allocate absurd buffers (an RX covariance of num_channels² entries, a Linear of in_channels x hidden...).
MAX_CHANNELS = 4096  # spectral channels of any node (num_channels, in_channels, input_channels)
MAX_HIDDEN = 8192  # hidden widths and embedding sizes (hidden, rep_dim)
MAX_RFF = 65536  # random Fourier features (n_rff)


def int_param(value: Any, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """A node hyper-parameter as int; TypeError (-> InvalidArgument at pipeline build) when it is not one
    or lies outside ``[minimum, maximum]``."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        out = int(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an integer, got {value!r}") from None
    if out != value and not isinstance(value, str):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and out < minimum:
        raise TypeError(f"{name} must be >= {minimum}, got {out}")
    if maximum is not None and out > maximum:
        raise TypeError(f"{name} must be <= {maximum}, got {out}")
    return out


def float_param(value: Any, name: str, minimum: float | None = None, maximum: float | None = None) -> float:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number, got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    if out != out:  # NaN
        raise TypeError(f"{name} must be a number, got NaN")
    if minimum is not None and out < minimum:
        raise TypeError(f"{name} must be >= {minimum}, got {out}")
    if maximum is not None and out > maximum:
        raise TypeError(f"{name} must be <= {maximum}, got {out}")
    return out
