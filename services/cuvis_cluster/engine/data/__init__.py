"""Data modules: synthetic Lentils, NPZ folders, .cu3s sessions (cuvis SDK) and Indian Pines (tensorly).

Entry points: :func:`build_datamodule` (config mapping + :class:`DataRoots` -> set-up :class:`DataModule`,
in :mod:`.factory`) and :class:`DataRoots` for path confinement. See :mod:`.base` for the batch-dict
layout and the registry table.
"""

from __future__ import annotations

from .base import (
    CONFIG_KEYS,
    DATA_MODULES,
    DEFAULT_DATA_MODULE,
    SPLITS,
    DataModule,
    collate_frames,
    format_ids,
    parse_ids,
    register_data_module,
)
from .factory import build_datamodule  # also imports (and so registers) every built-in source
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
