"""Entry node: turns what a data module or a client sends into what the rest of a pipeline expects."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from ._common import bad_input, check_rank, require_input
from .base import Node, Port, register


def _id_list(value: Sequence[int] | int | None, field: str) -> list[int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return [value]
    try:
        return [int(v) for v in value]
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{field} must be a list of integer class ids, got {value!r}") from exc


@register
class HyperspectralInput(Node):
    """Cast the cube to float32, flatten the wavelengths to ``[C]`` and derive the anomaly mask.

    The anomaly mask is True where the class id is *not* in ``normal_class_ids`` (upstream's Lentils
    semantics: ``[0, 1]`` = unlabeled/background and black lentils are normal), or, when
    ``anomaly_class_ids`` is given, where the class id is one of those. A mask that is already boolean is
    taken as the anomaly mask itself.
    """

    INPUTS: ClassVar[dict[str, Port]] = {
        "cube": Port("any", ("B", "H", "W", "C"), description="hyperspectral cube, any numeric dtype"),
        "mask": Port(
            "any", ("B", "H", "W"), optional=True, description="class-id mask ([B,H,W] or [B,H,W,1])"
        ),
        "wavelengths": Port("any", ("B", "C"), optional=True, description="band centres in nm, [B,C] or [C]"),
        "mesu_index": Port("int64", ("B",), optional=True, description="measurement index, passed through"),
        "class_mask": Port(
            "any", ("B", "H", "W"), optional=True, description="multi-class ids, passed through as int32"
        ),
    }
    OUTPUTS: ClassVar[dict[str, Port]] = {
        "cube": Port("float32", ("B", "H", "W", "C")),
        "mask": Port("bool", ("B", "H", "W", 1), optional=True, description="True = anomalous pixel"),
        "wavelengths": Port("float32", ("C",), optional=True),
        "mesu_index": Port("int64", ("B",), optional=True),
        "class_mask": Port("int32", ("B", "H", "W", 1), optional=True, description="class ids [B,H,W,1]"),
    }
    CATEGORY = "source"
    TAGS = ("hyperspectral", "preprocessing", "mask")
    DESCRIPTION = "Casts the cube to float32, wavelengths to [C] and class ids to a boolean anomaly mask."

    def __init__(
        self,
        normal_class_ids: Sequence[int] | int | None = (0, 1),
        anomaly_class_ids: Sequence[int] | int | None = None,
    ) -> None:
        normal = _id_list(normal_class_ids, "normal_class_ids")
        anomaly = _id_list(anomaly_class_ids, "anomaly_class_ids")
        super().__init__(normal_class_ids=normal, anomaly_class_ids=anomaly)
        self.normal_class_ids = normal or []
        self.anomaly_class_ids = anomaly

    def forward(self, **inputs: Any) -> dict[str, Any]:
        cube = require_input(self, inputs, "cube")
        check_rank(self, "cube", cube, 4, "[B,H,W,C]")
        out: dict[str, Any] = {"cube": cube.to(torch.float32)}

        mask = inputs.get("mask")
        if mask is not None:
            if mask.dim() == 4 and mask.shape[-1] == 1:
                mask = mask[..., 0]
            if mask.dim() == 2 and cube.shape[0] == 1:
                mask = mask.unsqueeze(0)
            if tuple(mask.shape) != tuple(cube.shape[:3]):
                raise bad_input(
                    self, "mask", f"has shape {tuple(mask.shape)}, expected {tuple(cube.shape[:3])}"
                )
            out["mask"] = self._anomaly_mask(mask.to(cube.device)).unsqueeze(-1)

        wavelengths = inputs.get("wavelengths")
        if wavelengths is not None:
            if wavelengths.dim() == 2:
                wavelengths = wavelengths[0]
            if wavelengths.dim() != 1 or wavelengths.shape[0] != cube.shape[-1]:
                raise bad_input(
                    self,
                    "wavelengths",
                    f"has shape {tuple(wavelengths.shape)}, expected [{cube.shape[-1]}] or [B,C]",
                )
            out["wavelengths"] = wavelengths.to(device=cube.device, dtype=torch.float32)
        mesu_index = inputs.get("mesu_index")
        if mesu_index is not None:
            out["mesu_index"] = mesu_index
        class_mask = inputs.get("class_mask")
        if class_mask is not None:
            out["class_mask"] = class_mask.unsqueeze(-1).to(torch.int32)
        return out

    def _anomaly_mask(self, mask: torch.Tensor) -> torch.Tensor:
        if mask.dtype == torch.bool:
            return mask
        ids = mask.to(torch.int64)
        if self.anomaly_class_ids is not None:
            return torch.isin(ids, torch.tensor(self.anomaly_class_ids, dtype=torch.int64, device=ids.device))
        normal = torch.tensor(self.normal_class_ids, dtype=torch.int64, device=ids.device)
        return ~torch.isin(ids, normal)


@register
class LentilsAnomalyDataNode(HyperspectralInput):
    """Upstream's name for :class:`HyperspectralInput`, so upstream pipeline YAML loads unchanged."""

    DESCRIPTION = "Alias of HyperspectralInput (upstream name)."
    UPSTREAM_CLASSES = ("cuvis_ai.node.data.LentilsAnomalyDataNode", "cuvis_ai.node.data.AnomalyDataNode")
