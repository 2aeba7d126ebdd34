"""Frames from a folder of ``.npz`` / ``.npy`` files (the SDK-free on-disk format).

* ``<name>.npz`` holds ``cube [H,W,C]`` and optionally ``wavelengths [C]`` and ``mask [H,W]`` (class ids);
  the key names are params. This matches cuvis-ai-dataloader's ``npz_multi`` files.
* ``<name>.npy`` holds just the cube; its mask, if any, is ``<name>_mask.npy``.
* Wavelengths missing from a file come from ``params.wavelengths`` or a ``wavelengths.npy`` in the folder.

Frame ids index the frame files sorted by name. Files are opened with ``allow_pickle=False``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from cuvis_cluster.errors import InvalidArgument, NotFound

from .base import REQUIRED, DataModule, Frame, register_data_module, wavelength_array

MASK_SUFFIX = "_mask"
WAVELENGTHS_FILE = "wavelengths.npy"


def _load(path: Path) -> Any:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise InvalidArgument(f"data: cannot read {path.name}: {exc}", field="data.params.path") from None


def frame_files(folder: Path) -> list[Path]:
    """The frame files of a folder, sorted by name (masks and the wavelengths file excluded)."""
    files = []
    for entry in sorted(folder.iterdir()):
        if not entry.is_file() or entry.suffix not in (".npz", ".npy"):
            continue
        if entry.name == WAVELENGTHS_FILE or (entry.suffix == ".npy" and entry.stem.endswith(MASK_SUFFIX)):
            continue
        files.append(entry)
    return files


@register_data_module
class NpzFolderDataModule(DataModule):
    NAME = "npz"
    DESCRIPTION = "Folder of .npz/.npy frames (cube HWC, wavelengths, optional class-id mask)."
    PARAMS: ClassVar[dict[str, Any]] = {
        "path": REQUIRED,
        "cube_key": "cube",
        "wavelengths_key": "wavelengths",
        "mask_key": "mask",
        "wavelengths": None,
        "shuffle": False,
    }

    def _open(self) -> int:
        folder = self._resolve("path")
        if not folder.is_dir():
            raise InvalidArgument(
                f"data.params.path: {self.params['path']!r} is not a folder", field="data.params.path"
            )
        self.folder = folder
        self.files = frame_files(folder)
        if not self.files:
            raise NotFound(
                f"data.params.path: {self.params['path']!r} contains no .npz or .npy frames",
                field="data.params.path",
            )
        self.default_wavelengths: np.ndarray | None = None
        if self.params["wavelengths"] is not None:
            try:
                self.default_wavelengths = np.asarray(self.params["wavelengths"], dtype=np.float64).reshape(
                    -1
                )
            except (TypeError, ValueError):
                raise InvalidArgument(
                    "data.params.wavelengths: expected a list of numbers", field="data.params.wavelengths"
                ) from None
        elif (folder / WAVELENGTHS_FILE).is_file():
            self.default_wavelengths = np.asarray(_load(folder / WAVELENGTHS_FILE)).reshape(-1)
        return len(self.files)

    def frame(self, frame_id: int) -> Frame:
        self.setup()
        path = self.files[frame_id]
        wavelengths = mask = None
        if path.suffix == ".npz":
            with _load(path) as archive:
                if self.params["cube_key"] not in archive:
                    raise InvalidArgument(
                        f"data: {path.name} has no {self.params['cube_key']!r} array "
                        f"(keys: {sorted(archive.files)})",
                        field="data.params.cube_key",
                    )
                cube = archive[self.params["cube_key"]]
                if self.params["wavelengths_key"] in archive:
                    wavelengths = archive[self.params["wavelengths_key"]]
                if self.params["mask_key"] in archive:
                    mask = archive[self.params["mask_key"]]
        else:
            cube = _load(path)
            mask_path = path.with_name(path.stem + MASK_SUFFIX + ".npy")
            if mask_path.is_file():
                mask = _load(mask_path)
        return self._validate(path, cube, wavelengths, mask)

    def _validate(self, path: Path, cube: np.ndarray, wavelengths: Any, mask: Any) -> Frame:
        cube = np.asarray(cube)
        if cube.ndim == 4 and cube.shape[0] == 1:
            cube = cube[0]
        if cube.ndim != 3 or not np.issubdtype(cube.dtype, np.number) or np.iscomplexobj(cube):
            raise InvalidArgument(
                f"data: {path.name}: cube must be a numeric [H,W,C] array, got {cube.shape} {cube.dtype}",
                field="data.params.path",
            )
        if cube.dtype not in (np.uint16, np.float32):
            cube = cube.astype(np.float32)
        if wavelengths is None:
            wavelengths = self.default_wavelengths
        if wavelengths is None:
            raise InvalidArgument(
                f"data: {path.name} has no wavelengths; store them in the file, in {WAVELENGTHS_FILE} or in "
                "data.params.wavelengths",
                field="data.params.wavelengths",
            )
        wavelengths = np.asarray(wavelengths).reshape(-1)
        if wavelengths.shape[0] != cube.shape[-1]:
            raise InvalidArgument(
                f"data: {path.name}: {wavelengths.shape[0]} wavelengths for {cube.shape[-1]} channels",
                field="data.params.wavelengths",
            )
        frame: Frame = {"cube": cube, "wavelengths": wavelength_array(wavelengths)}
        if mask is not None:
            mask = np.asarray(mask)
            if mask.ndim == 3 and mask.shape[-1] == 1:
                mask = mask[..., 0]
            if mask.shape != cube.shape[:2]:
                raise InvalidArgument(
                    f"data: {path.name}: mask shape {mask.shape} does not match the cube {cube.shape[:2]}",
                    field="data.params.mask_key",
                )
            frame["mask"] = mask.astype(np.int32)
        return frame
