"""Visualizers: render images as uint8 ``[B,H,W,3]`` tensors (pure torch at forward time).

Colormaps are 256-entry lookup tables built once per colormap name: from matplotlib when it is
installed, otherwise from a few anchor colours interpolated linearly.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, ClassVar

import numpy as np
import torch

from ._common import bad_input, check_bhwc, check_rank, int_param, require_input
from .base import Node, Port, Stage, register

IMAGE = Port("uint8", ("B", "H", "W", 3), description="RGB image")
VIS_STAGES = frozenset({Stage.VAL, Stage.TEST, Stage.INFERENCE})

# Approximate anchor colours (0..255) of a few perceptual colormaps, used when matplotlib is absent.
_ANCHORS: dict[str, list[tuple[int, int, int]]] = {
    "inferno": [
        (0, 0, 4),
        (40, 11, 84),
        (101, 21, 110),
        (159, 42, 99),
        (212, 72, 66),
        (245, 125, 21),
        (250, 193, 39),
        (252, 255, 164),
    ],
    "viridis": [
        (68, 1, 84),
        (70, 50, 127),
        (54, 92, 141),
        (39, 127, 142),
        (31, 161, 135),
        (74, 194, 109),
        (159, 218, 58),
        (253, 231, 37),
    ],
    "magma": [
        (0, 0, 4),
        (28, 16, 68),
        (79, 18, 123),
        (129, 37, 129),
        (181, 54, 122),
        (229, 80, 100),
        (251, 135, 97),
        (252, 253, 191),
    ],
    "gray": [(0, 0, 0), (255, 255, 255)],
    "grey": [(0, 0, 0), (255, 255, 255)],
}


@lru_cache(maxsize=16)
def colormap_lut(name: str) -> np.ndarray:
    """[256, 3] uint8 table for colormap ``name``; ValueError when it is unknown."""
    try:
        import matplotlib  # optional, heavy: only needed to build a table, so imported on first use

        cmap = matplotlib.colormaps[name]
        return np.round(cmap(np.linspace(0.0, 1.0, 256))[:, :3] * 255.0).astype(np.uint8)
    except ImportError:
        pass
    except KeyError:
        raise ValueError(f"unknown colormap {name!r}") from None
    anchors = _ANCHORS.get(name)
    if anchors is None:
        raise ValueError(
            f"unknown colormap {name!r} (matplotlib is not installed; built in: {sorted(_ANCHORS)})"
        )
    points = np.linspace(0.0, 1.0, len(anchors))
    grid = np.linspace(0.0, 1.0, 256)
    table = np.stack([np.interp(grid, points, [a[i] for a in anchors]) for i in range(3)], axis=1)
    return np.round(table).astype(np.uint8)


def _per_image_minmax(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Scale each image (dim 0) and channel (last dim) to [0, 1]; an empty tensor comes back empty."""
    if x.numel() == 0:
        return x.to(torch.float32) if not x.is_floating_point() else x.clone()
    flat = x.reshape(x.shape[0], -1, x.shape[-1])
    lo = flat.amin(dim=1).view(x.shape[0], 1, 1, x.shape[-1])
    hi = flat.amax(dim=1).view(x.shape[0], 1, 1, x.shape[-1])
    return (x - lo) / torch.clamp(hi - lo, min=eps)


def _to_uint8(unit: torch.Tensor) -> torch.Tensor:
    return torch.round(unit.clamp(0.0, 1.0) * 255.0).to(torch.uint8)


def _up_to(value: Any) -> int | None:
    return None if value is None else int_param(value, "up_to", minimum=1)


class Visualizer(Node):
    CATEGORY = "visualizer"
    STAGES = VIS_STAGES
    OUTPUTS: ClassVar[dict[str, Port]] = {"image": IMAGE}

    def _limit(self, x: torch.Tensor) -> torch.Tensor:
        up_to = getattr(self, "up_to", None)
        return x if up_to is None else x[:up_to]


@register
class ScoreHeatmapVisualizer(Visualizer):
    """Colour-mapped score image.

    Scores are min-max scaled per image when ``normalize_scores``, else clipped to [0, 1].
    """

    INPUTS: ClassVar[dict[str, Port]] = {"scores": Port("float32", ("B", "H", "W", 1))}
    TAGS = ("anomaly", "image")
    DESCRIPTION = "Heatmap of anomaly scores."

    lut: torch.Tensor  # [256, 3] uint8 colour table (non-persistent buffer)

    def __init__(
        self, normalize_scores: bool = True, cmap: str = "inferno", up_to: int | None = None
    ) -> None:
        try:
            lut = colormap_lut(str(cmap))
        except ValueError as exc:
            raise TypeError(str(exc)) from None
        limit = _up_to(up_to)
        super().__init__(normalize_scores=bool(normalize_scores), cmap=str(cmap), up_to=limit)
        self.normalize_scores, self.up_to = bool(normalize_scores), limit
        self.register_buffer("lut", torch.from_numpy(lut.copy()), persistent=False)

    def forward(self, **inputs: Any) -> dict[str, Any]:
        scores = require_input(self, inputs, "scores")
        check_rank(self, "scores", scores, 4, "[B,H,W,1]")
        s = self._limit(scores.detach()).to(torch.float32)[..., :1]
        unit = _per_image_minmax(s) if self.normalize_scores else s.clamp(0.0, 1.0)
        index = torch.round(torch.nan_to_num(unit, nan=0.0) * 255.0).long()[..., 0]
        return {"image": self.lut[index]}


def pick_rgb_bands(
    channels: int,
    wavelengths: torch.Tensor | None,
    weights: torch.Tensor | None,
    targets_nm: tuple[float, float, float],
) -> torch.Tensor:
    """Three channel indices ordered (R, G, B).

    With ``weights``: the three highest-weighted channels, the longest wavelength (or highest index) as red.
    With ``wavelengths``: the channels nearest to ``targets_nm``. Otherwise last, middle and first channel.
    """
    if weights is not None:
        top = torch.topk(weights.detach().reshape(-1), min(3, channels)).indices
        key = wavelengths[top].to(torch.float64) if wavelengths is not None else top.to(torch.float64)
        ordered = top[torch.argsort(key, descending=True)]
        return torch.cat([ordered, ordered[-1:].repeat(3 - ordered.numel())])
    if wavelengths is not None:
        target = torch.tensor(targets_nm, dtype=torch.float64, device=wavelengths.device)
        distance = (wavelengths.to(torch.float64).reshape(1, -1) - target.reshape(-1, 1)).abs()
        return distance.argmin(dim=1)
    return torch.tensor([channels - 1, channels // 2, 0])


@register
class FalseRGBVisualizer(Visualizer):
    """False-colour RGB from three bands of the cube, each min-max scaled per image."""

    INPUTS: ClassVar[dict[str, Port]] = {
        "cube": Port("float32", ("B", "H", "W", "C")),
        "wavelengths": Port("any", ("C",), optional=True, description="[C] or [B,C], nm"),
        "weights": Port("float32", ("C",), optional=True, description="channel weights: top 3 become RGB"),
    }
    TAGS = ("hyperspectral", "rgb", "image")
    DESCRIPTION = "False RGB: the bands nearest 650/550/450 nm, or the three highest-weighted bands."

    def __init__(
        self,
        red_nm: float = 650.0,
        green_nm: float = 550.0,
        blue_nm: float = 450.0,
        up_to: int | None = None,
        name: str | None = None,  # upstream passes a display name; accepted and ignored
    ) -> None:
        limit = _up_to(up_to)
        targets = (float(red_nm), float(green_nm), float(blue_nm))
        super().__init__(red_nm=targets[0], green_nm=targets[1], blue_nm=targets[2], up_to=limit)
        self.targets_nm, self.up_to = targets, limit

    def forward(self, **inputs: Any) -> dict[str, Any]:
        cube = check_bhwc(self, "cube", require_input(self, inputs, "cube"))
        channels = cube.shape[-1]
        if channels == 0:
            raise bad_input(self, "cube", f"has no channels (shape {tuple(cube.shape)})")
        wavelengths = inputs.get("wavelengths")
        if wavelengths is not None:
            wavelengths = wavelengths[0] if wavelengths.dim() == 2 else wavelengths
            if wavelengths.shape != (channels,):
                raise bad_input(
                    self, "wavelengths", f"has shape {tuple(wavelengths.shape)}, expected [{channels}]"
                )
        weights = inputs.get("weights")
        if weights is not None and weights.numel() != channels:
            raise bad_input(self, "weights", f"has {weights.numel()} entries, expected {channels}")
        bands = pick_rgb_bands(channels, wavelengths, weights, self.targets_nm).to(cube.device)
        rgb = self._limit(cube.detach()).index_select(-1, bands)
        return {"image": _to_uint8(torch.nan_to_num(_per_image_minmax(rgb), nan=0.0))}


@register
class CubeRGBVisualizer(FalseRGBVisualizer):
    """Upstream's name for the false-RGB visualizer (top-3 weighted bands when ``weights`` is connected)."""

    DESCRIPTION = "Alias of FalseRGBVisualizer (upstream name)."


@register
class AnomalyMaskVisualizer(Visualizer):
    """Overlay of decisions on one band of the cube.

    With a ground-truth ``mask``: true positives green, false positives red, missed anomalies blue.
    Without it: every flagged pixel red.
    """

    INPUTS: ClassVar[dict[str, Port]] = {
        "decisions": Port("bool", ("B", "H", "W", 1)),
        "cube": Port("float32", ("B", "H", "W", "C")),
        "mask": Port("bool", ("B", "H", "W", 1), optional=True, description="ground-truth anomaly mask"),
        "scores": Port(
            "float32", ("B", "H", "W", 1), optional=True, description="accepted for upstream configs; unused"
        ),
    }
    TAGS = ("anomaly", "mask", "image")
    DESCRIPTION = "Decisions (and errors against the mask) drawn over a grey band image."

    def __init__(self, channel: int = 0, up_to: int | None = None, alpha: float = 0.5) -> None:
        ch = int_param(channel, "channel", minimum=0)
        limit = _up_to(up_to)
        super().__init__(channel=ch, up_to=limit, alpha=float(alpha))
        self.channel, self.up_to, self.alpha = ch, limit, float(alpha)

    def forward(self, **inputs: Any) -> dict[str, Any]:
        cube = check_bhwc(self, "cube", require_input(self, inputs, "cube"))
        decisions = require_input(self, inputs, "decisions")
        if decisions.dim() == 3:
            decisions = decisions.unsqueeze(-1)
        if self.channel >= cube.shape[-1]:
            raise bad_input(
                self, "cube", f"has {cube.shape[-1]} channels; channel {self.channel} does not exist"
            )
        band = self._limit(cube.detach())[..., self.channel : self.channel + 1]
        grey = torch.nan_to_num(_per_image_minmax(band), nan=0.0).expand(*band.shape[:3], 3)
        d = self._limit(decisions).bool()
        colours = torch.zeros_like(grey)
        hit = torch.zeros_like(d)
        layers: tuple[tuple[torch.Tensor, tuple[float, float, float]], ...]
        mask = inputs.get("mask")
        if mask is not None:
            m = self._limit(mask.unsqueeze(-1) if mask.dim() == 3 else mask).bool()
            layers = ((d & m, (0.0, 1.0, 0.0)), (d & ~m, (1.0, 0.0, 0.0)), (~d & m, (0.0, 0.3, 1.0)))
        else:
            layers = ((d, (1.0, 0.0, 0.0)),)
        for where, colour in layers:
            rgb = torch.tensor(colour, dtype=grey.dtype, device=grey.device)
            colours = torch.where(where, rgb, colours)
            hit = hit | where
        blended = torch.where(hit, (1.0 - self.alpha) * grey + self.alpha * colours, grey)
        return {"image": _to_uint8(blended)}


@register
class AnomalyMask(AnomalyMaskVisualizer):
    """Upstream's name for :class:`AnomalyMaskVisualizer`."""

    DESCRIPTION = "Alias of AnomalyMaskVisualizer (upstream name)."
