"""The complete data-module registry and the config -> DataModule factory.

The registry table and its decorator live in :mod:`.base` (the implementations import them from there);
this module imports every built-in implementation at its top, so that their ``@register_data_module``
has run before :func:`build_datamodule` resolves a name. ``base`` never imports an implementation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from cuvis_cluster.errors import InvalidArgument

from . import cu3s, indian_pines, npz, synthetic  # noqa: F401  (imported so that they register)
from .base import CONFIG_KEYS, DATA_MODULES, DEFAULT_DATA_MODULE, DataModule
from .paths import DataRoots


def _as_mapping(config: Any) -> dict[str, Any]:
    if config is None:
        return {}
    dump: Callable[[], Any] | None = getattr(config, "model_dump", None)
    if callable(dump):
        config = dump()
    if not isinstance(config, Mapping):
        raise InvalidArgument(f"data: expected a mapping, got {type(config).__name__}", field="data")
    return dict(config)


def build_datamodule(config: Mapping[str, Any] | Any, roots: DataRoots | None = None) -> DataModule:
    """Build and set up the data module a data config names.

    ``config`` is a plain mapping (or a pydantic model, dumped first) with :data:`CONFIG_KEYS`; other
    top-level keys (upstream's ``cu3s_file_path``, ``annotation_json_path``, ``processing_mode``) are moved
    into ``params``. ``roots`` confines every file the source opens. Errors: ``InvalidArgument`` naming the
    ``data.*`` field for bad values, unknown modules, params or ids; ``NotFound`` for missing files;
    ``PermissionDenied`` for paths outside the roots; ``FailedPrecondition`` when an optional dependency
    (cuvis SDK, tensorly) is missing.
    """
    cfg = _as_mapping(config)
    if cfg.get("splits") is not None:  # the published form: dir_indices selectors -> frame ids
        from cuvis_cluster.engine.schemas import splits_to_ids

        try:
            cfg = splits_to_ids(cfg)
        except ValueError as exc:
            raise InvalidArgument(f"data.{exc}", field="data.splits") from None
    cfg.pop("splits", None)
    name = cfg.get("data_module") or DEFAULT_DATA_MODULE
    cls = DATA_MODULES.get(str(name))
    if cls is None:
        raise InvalidArgument(
            f"data.data_module: unknown data module {name!r}; available: {sorted(DATA_MODULES)}",
            field="data.data_module",
        )
    params = cfg.get("params") or {}
    if not isinstance(params, Mapping):
        raise InvalidArgument("data.params: expected a mapping", field="data.params")
    params = dict(params)
    for key, value in cfg.items():
        if key not in CONFIG_KEYS and value is not None and key in cls.PARAMS:
            params.setdefault(key, value)
    module = cls(
        batch_size=cfg.get("batch_size", 1) if cfg.get("batch_size") is not None else 1,
        num_workers=cfg.get("num_workers", 0) if cfg.get("num_workers") is not None else 0,
        train_ids=cfg.get("train_ids"),
        val_ids=cfg.get("val_ids"),
        test_ids=cfg.get("test_ids"),
        params=params,
        roots=roots,
    )
    return module.setup()
