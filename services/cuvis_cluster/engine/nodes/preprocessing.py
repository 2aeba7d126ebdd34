"""Spectral preprocessing: band selection by wavelength."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ._common import BHWC, bad_input, check_bhwc, require_input
from .base import Node, Port, register


@register
class BandpassByWavelength(Node):
    """Keep the channels whose wavelength lies in ``[min_wavelength_nm, max_wavelength_nm]`` (inclusive).

    With 61 bands from 430 to 910 nm in 8 nm steps, ``min_wavelength_nm=700`` keeps 27 channels.
    """

    INPUTS: ClassVar[dict[str, Port]] = {
        "data": Port("float32", BHWC),
        "wavelengths": Port("any", ("C",), description="band centres in nm, [C] or [B,C] (row 0 is used)"),
    }
    OUTPUTS: ClassVar[dict[str, Port]] = {"filtered": Port("float32", ("B", "H", "W", "K"))}
    CATEGORY = "transform"
    TAGS = ("hyperspectral", "preprocessing")
    DESCRIPTION = "Keeps the bands inside a wavelength window."
    UPSTREAM_CLASSES = ("cuvis_ai.node.preprocessors.BandpassByWavelength",)

    def __init__(self, min_wavelength_nm: float, max_wavelength_nm: float | None = None) -> None:
        lo = float(min_wavelength_nm)
        hi = None if max_wavelength_nm is None else float(max_wavelength_nm)
        if hi is not None and hi < lo:
            raise TypeError(f"max_wavelength_nm ({hi}) is below min_wavelength_nm ({lo})")
        super().__init__(min_wavelength_nm=lo, max_wavelength_nm=hi)
        self.min_wavelength_nm = lo
        self.max_wavelength_nm = hi

    def band_mask(self, wavelengths: torch.Tensor) -> torch.Tensor:
        wl = wavelengths.to(torch.float64)
        keep = wl >= self.min_wavelength_nm
        if self.max_wavelength_nm is not None:
            keep &= wl <= self.max_wavelength_nm
        return keep

    def forward(self, **inputs: Any) -> dict[str, Any]:
        data = check_bhwc(self, "data", require_input(self, inputs, "data"))
        wl = require_input(self, inputs, "wavelengths")
        if wl.dim() == 2:
            wl = wl[0]
        if wl.dim() != 1 or wl.shape[0] != data.shape[-1]:
            raise bad_input(
                self,
                "wavelengths",
                f"has shape {tuple(wl.shape)}; expected [{data.shape[-1]}] to match the data",
            )
        keep = self.band_mask(wl).to(data.device)
        if not bool(keep.any()):
            raise bad_input(
                self,
                "wavelengths",
                f"has no band in [{self.min_wavelength_nm}, {self.max_wavelength_nm or 'inf'}] nm "
                f"(range {float(wl.min()):.1f}..{float(wl.max()):.1f} nm)",
            )
        index = torch.nonzero(keep, as_tuple=False).squeeze(1)
        return {"filtered": data.index_select(-1, index)}
