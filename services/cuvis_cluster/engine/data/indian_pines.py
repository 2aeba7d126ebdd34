"""Indian Pines (AVIRIS, 1992; CC BY 3.0) from the ``tensorly`` wheel, as a stack of frames.

``tensorly.datasets.load_indian_pines()`` returns a Bunch: ``tensor`` (145, 145, 200) float64 counts
(955..9604), ``ticks = [labels (145, 145) ints 0..16, wavelengths (200 floats, nm; 3 small inversions)]``.
It reads files shipped inside the wheel; nothing is downloaded.

Frames: the scene is cut into ``patch_size`` tiles, row-major (default 36 px: 4x4 = 16 frames, the last
row/column of the scene dropped). Bands:

* ``bands: "lentils61"`` (default): each pixel spectrum is linearly resampled to the Lentils grid
  (61 bands, 430-910 nm, 8 nm), so the shipped 61-channel pipelines run unchanged on real data;
* ``bands: "native"``: the 200 AVIRIS bands with their own wavelengths.

Labels: the ground-truth class ids (0 = unlabelled, 1..16 crops). With ``anomaly_class_ids`` the mask is
recoded to 0 (normal) / 2 (anomalous), so pipelines that use ``normal_class_ids=[0, 1]`` (the Lentils
convention) treat exactly those classes as anomalies.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from cuvis_cluster.errors import FailedPrecondition, InvalidArgument

from .base import DataModule, Frame, register_data_module
from .synthetic import WAVELENGTHS_NM

BANDS = ("lentils61", "native")
ANOMALY_CODE = 2
CLASS_NAMES = {
    0: "unlabelled",
    1: "alfalfa",
    2: "corn-notill",
    3: "corn-mintill",
    4: "corn",
    5: "grass-pasture",
    6: "grass-trees",
    7: "grass-pasture-mowed",
    8: "hay-windrowed",
    9: "oats",
    10: "soybean-notill",
    11: "soybean-mintill",
    12: "soybean-clean",
    13: "wheat",
    14: "woods",
    15: "buildings-grass-trees-drives",
    16: "stone-steel-towers",
}


def load_scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(cube [145,145,200] float32, labels [145,145] int32, wavelengths [200] float64)``."""
    try:
        # Optional dependency, imported on use so that the other sources work without it.
        from tensorly.datasets import load_indian_pines
    except ImportError as exc:
        raise FailedPrecondition(
            f"the indian_pines data module needs the tensorly package: `pip install tensorly` ({exc})"
        ) from None
    bunch = load_indian_pines()
    cube = np.asarray(bunch.tensor, dtype=np.float32)
    labels = np.asarray(bunch.ticks[0]).astype(np.int32)
    wavelengths = np.asarray(bunch.ticks[1], dtype=np.float64).reshape(-1)
    if cube.ndim != 3 or labels.shape != cube.shape[:2] or wavelengths.shape[0] != cube.shape[2]:
        raise FailedPrecondition(
            f"tensorly's Indian Pines has an unexpected layout: cube {cube.shape}, labels {labels.shape}, "
            f"wavelengths {wavelengths.shape}"
        )
    return cube, labels, wavelengths


def resample_bands(cube: np.ndarray, source_nm: np.ndarray, target_nm: np.ndarray) -> np.ndarray:
    """Linear interpolation of every pixel spectrum onto ``target_nm`` (one gather, no per-pixel loop)."""
    order = np.argsort(source_nm, kind="stable")
    src = source_nm[order]
    data = cube[..., order]
    hi = np.clip(np.searchsorted(src, target_nm, side="left"), 1, src.shape[0] - 1)
    lo = hi - 1
    span = np.where(src[hi] > src[lo], src[hi] - src[lo], 1.0)
    frac = np.clip((target_nm - src[lo]) / span, 0.0, 1.0).astype(np.float32)
    return data[..., lo] * (1.0 - frac) + data[..., hi] * frac


@register_data_module
class IndianPinesDataModule(DataModule):
    NAME = "indian_pines"
    DESCRIPTION = "AVIRIS Indian Pines scene (tensorly wheel), tiled into frames."
    PARAMS: ClassVar[dict[str, Any]] = {
        "patch_size": 36,
        "bands": "lentils61",
        "anomaly_class_ids": None,
        "shuffle": False,
    }
    CLASS_NAMES = CLASS_NAMES

    def _open(self) -> int:
        size = self.params["patch_size"]
        if isinstance(size, bool) or not isinstance(size, int) or not 4 <= size <= 145:
            raise InvalidArgument(
                f"data.params.patch_size: expected an integer in [4, 145], got {size!r}",
                field="data.params.patch_size",
            )
        if self.params["bands"] not in BANDS:
            raise InvalidArgument(
                f"data.params.bands: expected one of {BANDS}, got {self.params['bands']!r}",
                field="data.params.bands",
            )
        anomaly = self.params["anomaly_class_ids"]
        if anomaly is not None:
            try:
                anomaly = [int(v) for v in anomaly]
            except (TypeError, ValueError):
                raise InvalidArgument(
                    "data.params.anomaly_class_ids: expected a list of class ids",
                    field="data.params.anomaly_class_ids",
                ) from None
        cube, labels, wavelengths = load_scene()
        if self.params["bands"] == "lentils61":
            cube = resample_bands(cube, wavelengths, WAVELENGTHS_NM.astype(np.float64))
            self.wavelengths = WAVELENGTHS_NM.copy()
        else:
            self.wavelengths = wavelengths.astype(np.float32)
        if anomaly is not None:
            labels = np.where(np.isin(labels, anomaly), ANOMALY_CODE, 0).astype(np.int32)
        self.cube, self.labels = np.ascontiguousarray(cube, dtype=np.float32), labels
        self.rows = cube.shape[0] // size
        self.cols = cube.shape[1] // size
        return self.rows * self.cols

    def frame(self, frame_id: int) -> Frame:
        self.setup()
        size = self.params["patch_size"]
        r, c = divmod(int(frame_id), self.cols)
        window = (slice(r * size, (r + 1) * size), slice(c * size, (c + 1) * size))
        return {
            "cube": self.cube[window].copy(),
            "wavelengths": self.wavelengths.copy(),
            "mask": self.labels[window].copy(),
        }
