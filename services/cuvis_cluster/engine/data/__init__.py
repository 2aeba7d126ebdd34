"""Data modules: synthetic Lentils, NPZ folders, .cu3s sessions (cuvis SDK) and Indian Pines (tensorly).

Entry points: :func:`build_datamodule` (config mapping + :class:`DataRoots` -> set-up :class:`DataModule`)
and :class:`DataRoots` for path confinement. See :mod:`.base` for the batch-dict layout.
"""

from __future__ import annotations

from . import cu3s, indian_pines, npz, synthetic  # noqa: F401  (registration)
from .base import (
    CONFIG_KEYS,
    DATA_MODULES,
    DEFAULT_DATA_MODULE,
    SPLITS,
    DataModule,
    build_datamodule,
    collate_frames,
    format_ids,
    parse_ids,
    register_data_module,
)
from .paths import DataRoots

__all__ = [
    "CONFIG_KEYS",
    "DATA_MODULES",
    "DEFAULT_DATA_MODULE",
    "SPLITS",
    "DataModule",
    "DataRoots",
    "build_datamodule",
    "collate_frames",
    "format_ids",
    "parse_ids",
    "register_data_module",
]
