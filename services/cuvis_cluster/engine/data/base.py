"""The data-module interface and its registry table (the factory is in :mod:`.factory`).

A data module serves frames of one source (synthetic, NPZ folder, .cu3s session, Indian Pines) split into
train/val/test by frame ids. Its loaders yield **batch dicts** of CPU tensors:

``cube``         ``[B,H,W,C]`` uint16 (counts) or float32
``wavelengths``  ``[B,C]`` int32 (integral band centres) or float32, nm
``mask``         ``[B,H,W]`` int32 class ids (only when the source has labels)
``frame_id``     ``[B]`` int64, the frame ids of the batch

The pipeline graph feeds these keys to the ports of the same name (``HyperspectralInput`` turns the
class ids into a boolean anomaly mask).

Config (a plain mapping): the published ``cuvis_ai_schemas`` DataConfig, whose ``splits`` select frames
by ``dir_indices`` selectors (the frame ids), or our old shape with ``train_ids``/``val_ids``/``test_ids``
(the factory maps the former onto the latter)::

    {data_module: "lentils_synthetic", batch_size: 2, num_workers: 0,
     splits: {train: [{kind: dir_indices, ids: [0, 1, 2]}], val: [...], test: [...]},
     params: {...source specific...}}

Ids are lists of ints; strings such as ``"0-3,7"`` are accepted too (inclusive ranges). An id list left
as None takes the default share (:func:`default_split`: 60 % train, 20 % val, 20 % test); ``[]`` is empty.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cuvis_cluster.errors import InvalidArgument

from .paths import DataRoots

SPLITS = ("train", "val", "test")
CONFIG_KEYS = ("data_module", "batch_size", "num_workers", "train_ids", "val_ids", "test_ids", "params")
DEFAULT_DATA_MODULE = "lentils_synthetic"

Frame = dict[str, np.ndarray]

_RANGE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


def parse_ids(value: Any, field: str = "ids") -> list[int]:
    """Frame ids from a config value: None, an int, a list of ints/strings, or a string like ``"0-3, 7"``.

    Ranges are inclusive. Order is kept and duplicates dropped. Anything else is InvalidArgument naming
    ``field``.
    """
    if value is None:
        return []
    items: Iterable[Any]
    if isinstance(value, str):
        items = [part for part in value.split(",") if part.strip()]
    elif isinstance(value, bool):
        raise InvalidArgument(f"{field}: expected frame ids, got {value!r}", field=field)
    elif isinstance(value, int | np.integer):
        items = [int(value)]
    elif isinstance(value, Iterable):
        items = list(value)
    else:
        raise InvalidArgument(f"{field}: expected a list of frame ids, got {value!r}", field=field)
    out: list[int] = []
    seen: set[int] = set()
    for item in items:
        if isinstance(item, bool):
            raise InvalidArgument(f"{field}: {item!r} is not a frame id", field=field)
        if isinstance(item, int | np.integer):
            ids = [int(item)]
            if ids[0] < 0:
                raise InvalidArgument(f"{field}: frame ids are non-negative, got {item}", field=field)
        elif isinstance(item, str):
            match = _RANGE.match(item)
            if not match:
                raise InvalidArgument(
                    f"{field}: {item!r} is not a frame id or an inclusive range 'a-b'", field=field
                )
            lo = int(match.group(1))
            hi = int(match.group(2)) if match.group(2) is not None else lo
            if hi < lo:
                raise InvalidArgument(
                    f"{field}: range {item.strip()!r} is empty (end before start)", field=field
                )
            if hi - lo > 10_000_000:
                raise InvalidArgument(f"{field}: range {item.strip()!r} is too large", field=field)
            ids = list(range(lo, hi + 1))
        else:
            raise InvalidArgument(f"{field}: {item!r} is not a frame id", field=field)
        for i in ids:
            if i not in seen:
                seen.add(i)
                out.append(i)
    return out


def format_ids(ids: Sequence[int]) -> str:
    """The inverse of :func:`parse_ids` for sorted unique ids: ``[0,1,2,5]`` -> ``"0-2,5"``."""
    parts: list[str] = []
    run: list[int] = []
    for i in ids:
        if run and i == run[-1] + 1:
            run.append(i)
            continue
        if run:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [i]
    if run:
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(parts)


def wavelength_array(values: Any) -> np.ndarray:
    """Band centres as a 1-d array: int32 when all are integral (as Cubert reports them), else float32."""
    wl = np.asarray(values).reshape(-1)
    if np.issubdtype(wl.dtype, np.integer) or bool(np.all(np.mod(wl.astype(np.float64), 1.0) == 0.0)):
        return wl.astype(np.int32)
    return wl.astype(np.float32)


def default_split(num_frames: int) -> dict[str, list[int]]:
    """The split used for ids left as None: the first 60 % train, the next 20 % val, the rest test.

    Every split gets at least one frame when there are three or more frames.
    """
    n = max(int(num_frames), 0)
    if n < 3:
        return {"train": list(range(n)), "val": [], "test": []}
    n_val = max(1, round(0.2 * n))
    n_test = max(1, round(0.2 * n))
    n_train = n - n_val - n_test
    return {
        "train": list(range(n_train)),
        "val": list(range(n_train, n_train + n_val)),
        "test": list(range(n_train + n_val, n)),
    }


class _FrameDataset(Dataset):
    def __init__(self, module: DataModule, ids: Sequence[int]) -> None:
        self.module = module
        self.ids = list(ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Frame:
        frame_id = self.ids[index]
        frame = dict(self.module.frame(frame_id))
        frame["frame_id"] = np.asarray(frame_id, dtype=np.int64)
        return frame


def collate_frames(frames: Sequence[Frame]) -> dict[str, torch.Tensor]:
    """Stack frames into a batch dict; frames of different sizes cannot share a batch."""
    batch: dict[str, torch.Tensor] = {}
    keys = set(frames[0])
    if any(set(f) != keys for f in frames[1:]):
        ids = [int(f["frame_id"]) for f in frames]
        raise InvalidArgument(
            f"frames {ids} do not carry the same arrays ({[sorted(f) for f in frames]}); "
            "label all frames or none, or set data.batch_size to 1",
            field="data.batch_size",
        )
    for key in frames[0]:
        arrays = [np.asarray(f[key]) for f in frames]
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            ids = [int(f["frame_id"]) for f in frames]
            raise InvalidArgument(
                f"frames {ids} differ in {key} shape ({sorted(shapes)}) and cannot share a batch; "
                "set data.batch_size to 1 or use frames of one size",
                field="data.batch_size",
            )
        batch[key] = torch.from_numpy(np.ascontiguousarray(np.stack(arrays)))
    return batch


class DataModule(abc.ABC):
    """Frames of one source, split by ids; loaders yield batch dicts (see the module docstring).

    Subclasses set ``NAME``, ``PARAMS`` (the accepted ``params`` keys with defaults; ``REQUIRED`` marks
    mandatory ones) and implement :meth:`_open` and :meth:`frame`.
    """

    NAME: ClassVar[str] = ""
    DESCRIPTION: ClassVar[str] = ""
    PARAMS: ClassVar[dict[str, Any]] = {}
    CLASS_NAMES: ClassVar[dict[int, str]] = {}

    def __init__(
        self,
        *,
        batch_size: int = 1,
        num_workers: int = 0,
        train_ids: Any = None,
        val_ids: Any = None,
        test_ids: Any = None,
        params: Mapping[str, Any] | None = None,
        roots: DataRoots | None = None,
    ) -> None:
        self.batch_size = _positive_int(batch_size, "data.batch_size", minimum=1)
        self.num_workers = _positive_int(num_workers, "data.num_workers", minimum=0)
        # None = the module's default share of the frames (see default_split); [] = an empty split.
        self._requested: dict[str, list[int] | None] = {
            split: None if value is None else parse_ids(value, f"data.{split}_ids")
            for split, value in zip(SPLITS, (train_ids, val_ids, test_ids), strict=True)
        }
        self.split_ids: dict[str, list[int]] = {s: list(v or []) for s, v in self._requested.items()}
        self.params = self._check_params(params or {})
        self.roots = roots
        self._ready = False

    # -- to implement ------------------------------------------------------------------------------
    @abc.abstractmethod
    def _open(self) -> int:
        """Prepare the source (list files, load the scene, import an SDK) and return the number of frames."""

    @abc.abstractmethod
    def frame(self, frame_id: int) -> Frame:
        """One frame as numpy arrays: ``cube [H,W,C]``, ``wavelengths [C]``, when labelled ``mask [H,W]``."""

    # -- public ------------------------------------------------------------------------------------
    def setup(self) -> DataModule:
        """Open the source and validate the split ids against it (idempotent)."""
        if self._ready:
            return self
        self.num_frames = int(self._open())
        defaults = default_split(self.num_frames)
        self.split_ids = {s: defaults[s] if v is None else list(v) for s, v in self._requested.items()}
        for split, ids in self.split_ids.items():
            bad = [i for i in ids if i >= self.num_frames]
            if bad:
                raise InvalidArgument(
                    f"data.{split}_ids: frame ids {bad} do not exist; {self.NAME} has "
                    f"{self.num_frames} frames (ids 0-{self.num_frames - 1})",
                    field=f"data.{split}_ids",
                )
        self._ready = True
        return self

    def ids(self, split: str) -> list[int]:
        if split not in SPLITS:
            raise InvalidArgument(f"unknown split {split!r}; expected one of {SPLITS}", field="split")
        return list(self.split_ids[split])

    def dataloader(
        self, split: str, *, shuffle: bool = False, generator: torch.Generator | None = None
    ) -> DataLoader:
        """A torch DataLoader over the split (empty splits give a loader with no batches)."""
        self.setup()
        dataset = _FrameDataset(self, self.ids(split))
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=collate_frames,
            generator=generator,
            persistent_workers=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self.dataloader("train", shuffle=bool(self.params.get("shuffle", False)))

    def val_dataloader(self) -> DataLoader:
        return self.dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self.dataloader("test")

    def describe(self) -> dict[str, Any]:
        """Summary for logs and UIs: module, frame count, splits, bands and class names."""
        self.setup()
        first = self.frame(0) if self.num_frames else {}
        wavelengths = first.get("wavelengths")
        return {
            "data_module": self.NAME,
            "num_frames": self.num_frames,
            "splits": {s: self.ids(s) for s in SPLITS},
            "batch_size": self.batch_size,
            "channels": None if wavelengths is None else int(np.asarray(wavelengths).shape[0]),
            "wavelengths": None if wavelengths is None else np.asarray(wavelengths).tolist(),
            "class_names": dict(self.CLASS_NAMES),
            "params": dict(self.params),
        }

    # -- helpers -----------------------------------------------------------------------------------
    def _check_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(params) - set(self.PARAMS))
        if unknown:
            raise InvalidArgument(
                f"data.params: unknown parameter(s) {unknown} for data module {self.NAME!r}; "
                f"accepted: {sorted(self.PARAMS)}",
                field=f"data.params.{unknown[0]}",
            )
        merged = {**self.PARAMS, **dict(params)}
        missing = sorted(k for k, v in merged.items() if v is REQUIRED)
        if missing:
            raise InvalidArgument(
                f"data.params: data module {self.NAME!r} needs {missing}", field=f"data.params.{missing[0]}"
            )
        return merged

    def _resolve(self, key: str, *, must_exist: bool = True):
        if self.roots is None:
            raise InvalidArgument(
                f"data.params.{key}: file access needs configured data roots", field=f"data.params.{key}"
            )
        return self.roots.resolve(str(self.params[key]), field=f"data.params.{key}", must_exist=must_exist)


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


def _positive_int(value: Any, field: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer | str):
        raise InvalidArgument(f"{field}: expected an integer >= {minimum}, got {value!r}", field=field)
    try:
        out = int(value)
    except ValueError:
        raise InvalidArgument(
            f"{field}: expected an integer >= {minimum}, got {value!r}", field=field
        ) from None
    if out < minimum:
        raise InvalidArgument(f"{field}: expected an integer >= {minimum}, got {out}", field=field)
    return out


# Data module name -> class. Filled by @register_data_module as each implementation is imported; this
# module imports none of them (:mod:`.factory` does), so the implementations can import it freely.
DATA_MODULES: dict[str, type[DataModule]] = {}


def register_data_module(cls: type[DataModule]) -> type[DataModule]:
    """Class decorator that adds a data module to :data:`DATA_MODULES` under its ``NAME``."""
    if not cls.NAME:
        raise ValueError(f"{cls.__name__} has no NAME")
    if cls.NAME in DATA_MODULES and DATA_MODULES[cls.NAME] is not cls:
        raise ValueError(f"data module {cls.NAME} registered twice")
    DATA_MODULES[cls.NAME] = cls
    return cls
