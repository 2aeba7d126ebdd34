"""Frames of a Cubert ``.cu3s`` session file, read through the ``cuvis`` SDK, with COCO labels.

``import cuvis`` needs Cubert's native ``libcuvis``, which no package registry ships. The SDK is imported
only when a cu3s data module is opened; when it is missing the request fails with FailedPrecondition
saying what to install. Nothing here runs at import time.

Labels come from a COCO JSON next to the session (``annotation_json_path``): ``image_id`` is the
measurement index, ``category_id`` the class id; polygons and RLE (list or compressed string) are
rasterised without Python loops over pixels.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from cuvis_cluster.errors import FailedPrecondition, InvalidArgument

from .base import REQUIRED, DataModule, Frame, register_data_module, wavelength_array

INSTALL_HINT = (
    "reading .cu3s files needs Cubert's cuvis SDK: install the native libcuvis (Cubert's C SDK installer, "
    "or run the worker from the cubertgmbh/cuvis_python image), set the CUVIS environment variable to its "
    "install directory, then `pip install cuvis`"
)


def import_cuvis() -> Any:
    """The ``cuvis`` module, or FailedPrecondition explaining how to install it."""
    try:
        # Imported on use: the SDK needs Cubert's native libcuvis. It has no stubs and is absent where
        # mypy runs, hence the ignore.
        import cuvis  # type: ignore[import-not-found]
    except Exception as exc:  # ImportError, or the SDK's own loader errors (CUVIS unset, libcuvis missing)
        raise FailedPrecondition(f"{INSTALL_HINT} ({type(exc).__name__}: {exc})") from None
    return cuvis


# -- COCO rasterisation -------------------------------------------------------------------------------
def polygon_mask(polygon: Sequence[float], height: int, width: int) -> np.ndarray:
    """Pixels whose centre lies inside the polygon ``[x0, y0, x1, y1, ...]`` (even-odd rule)."""
    pts = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
    mask = np.zeros((height, width), dtype=bool)
    if pts.shape[0] < 3:
        return mask
    x0 = max(int(np.floor(pts[:, 0].min())), 0)
    x1 = min(int(np.ceil(pts[:, 0].max())) + 1, width)
    y0 = max(int(np.floor(pts[:, 1].min())), 0)
    y1 = min(int(np.ceil(pts[:, 1].max())) + 1, height)
    if x0 >= x1 or y0 >= y1:
        return mask
    py = np.arange(y0, y1, dtype=np.float64)[:, None] + 0.5
    px = np.arange(x0, x1, dtype=np.float64)[None, :] + 0.5
    inside = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    for (ax, ay), (bx, by) in zip(pts, np.roll(pts, -1, axis=0), strict=True):  # loop over edges, not pixels
        if ay == by:
            continue
        crosses = (ay > py) != (by > py)
        x_at = ax + (py - ay) * (bx - ax) / (by - ay)
        inside ^= crosses & (px < x_at)
    mask[y0:y1, x0:x1] = inside
    return mask


def decode_rle_string(counts: str) -> list[int]:
    """Run lengths of COCO's compressed RLE string (6-bit chars, 5 payload bits, delta-coded from i=3)."""
    runs: list[int] = []
    pos = 0
    while pos < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if pos >= len(counts):
                raise ValueError("truncated RLE string")
            c = ord(counts[pos]) - 48
            value |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            pos += 1
            shift += 5
            if not more and c & 0x10:
                value |= -1 << shift
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def rle_mask(rle: dict[str, Any], height: int, width: int) -> np.ndarray:
    """Decode an RLE segmentation (column-major runs alternating background/foreground)."""
    h, w = (int(v) for v in rle.get("size", (height, width)))
    counts = rle["counts"]
    runs = decode_rle_string(counts) if isinstance(counts, str) else [int(c) for c in counts]
    if any(r < 0 for r in runs) or sum(runs) != h * w:
        raise ValueError(f"RLE runs cover {sum(runs)} pixels, expected {h * w}")
    values = np.arange(len(runs)) % 2 == 1
    flat = np.repeat(values, runs)
    return flat.reshape(w, h).T


def coco_class_mask(annotations: Sequence[dict[str, Any]], height: int, width: int) -> np.ndarray:
    """Class-id mask [H,W] int32 from one image's COCO annotations (later annotations paint over earlier)."""
    mask = np.zeros((height, width), dtype=np.int32)
    for ann in annotations:
        seg = ann.get("segmentation")
        cls = int(ann.get("category_id", 0))
        if isinstance(seg, dict):
            region = rle_mask(seg, height, width)
        elif isinstance(seg, list):
            region = np.zeros((height, width), dtype=bool)
            for poly in seg:
                region |= polygon_mask(poly, height, width)
        else:
            continue
        mask[region] = cls
    return mask


@register_data_module
class Cu3sDataModule(DataModule):
    NAME = "cu3s"
    DESCRIPTION = "Measurements of a Cubert .cu3s session (cuvis SDK) with optional COCO labels."
    PARAMS: ClassVar[dict[str, Any]] = {
        "cu3s_file_path": REQUIRED,
        "annotation_json_path": None,
        "processing_mode": "Reflectance",
        "shuffle": False,
    }
    CLASS_NAMES = {0: "Unlabeled", 1: "Lentils_black", 2: "Lentils_brown", 3: "Stone", 4: "Background"}

    # SDK handles (cuvis.SessionFile, cuvis.ProcessingContext): both set together by _open_session, or
    # both None (not opened yet, or dropped when the module was pickled into another process).
    _session: Any | None = None
    _context: Any | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_session"] = state["_context"] = None  # SDK handles stay in their process
        return state

    def _open(self) -> int:
        self.path = self._resolve("cu3s_file_path")
        self.annotations: dict[int, list[dict[str, Any]]] | None = None
        if self.params["annotation_json_path"]:
            json_path = self._resolve("annotation_json_path")
            try:
                coco = json.loads(json_path.read_text())
            except (OSError, ValueError) as exc:
                raise InvalidArgument(
                    f"data.params.annotation_json_path: cannot read COCO JSON: {exc}",
                    field="data.params.annotation_json_path",
                ) from None
            self.annotations = {}
            for ann in coco.get("annotations", []):
                self.annotations.setdefault(int(ann.get("image_id", -1)), []).append(ann)
        if self.num_workers:
            raise InvalidArgument(
                "data.num_workers: the cu3s source reads through the SDK; use 0", field="data.num_workers"
            )
        self._session = self._context = None
        session, _ = self._open_session()
        return len(session)

    def _open_session(self) -> tuple[Any, Any]:
        """The open ``(session, processing context)``, opening both on first use.

        They are stored only once both exist, so a session whose context failed to open is opened again
        on the next call instead of being used without a context.
        """
        if self._session is None or self._context is None:
            cuvis = import_cuvis()
            try:
                session = cuvis.SessionFile(str(self.path))
                context = cuvis.ProcessingContext(session)
                mode = getattr(cuvis.ProcessingMode, str(self.params["processing_mode"]))
                context.processing_mode = mode
            except AttributeError:
                raise InvalidArgument(
                    f"data.params.processing_mode: unknown mode {self.params['processing_mode']!r}",
                    field="data.params.processing_mode",
                ) from None
            except Exception as exc:  # the SDK reports unreadable sessions and missing references this way
                raise InvalidArgument(
                    f"data.params.cu3s_file_path: cuvis cannot open {self.path.name}: {exc}",
                    field="data.params.cu3s_file_path",
                ) from None
            self._session, self._context = session, context
        return self._session, self._context

    def frame(self, frame_id: int) -> Frame:
        session, context = self._open_session()
        try:
            mesu = session.get_measurement(int(frame_id))
            context.apply(mesu)
            cube = np.asarray(mesu.cube.array)
            wavelengths = np.asarray(mesu.cube.wavelength).reshape(-1)
        except Exception as exc:
            raise InvalidArgument(
                f"data: cuvis failed on measurement {frame_id} of {self.path.name}: {exc}",
                field="data.params.cu3s_file_path",
            ) from None
        if cube.dtype not in (np.uint16, np.float32):
            cube = cube.astype(np.float32)
        frame: Frame = {"cube": cube, "wavelengths": wavelength_array(wavelengths)}
        if self.annotations is not None:
            frame["mask"] = coco_class_mask(
                self.annotations.get(int(frame_id), []), cube.shape[0], cube.shape[1]
            )
        return frame
