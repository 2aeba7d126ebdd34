"""The directories a worker may read and write, and the checks that keep every server-side path inside them.

Config search paths must lie inside the allowed roots (``configs_dir``, ``data_dir``, ``output_dir`` and
``extra_roots``), files are written under ``output_dir`` only, and data is read under
``data_dir``/``extra_roots``. Symlinks are resolved before every check. Writes are atomic (temp file +
rename) and get the permissions a plain ``open`` would.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from cuvis_cluster.engine.data import DataModule, DataRoots, build_datamodule
from cuvis_cluster.engine.types import EngineConfig
from cuvis_cluster.errors import InvalidArgument, NotFound, PermissionDenied


def inside(real: Path, dirs: Iterable[Path]) -> bool:
    """Whether the resolved path ``real`` is one of ``dirs`` or lies below one."""
    return any(real == d or real.is_relative_to(d) for d in dirs)


def path_text(path: str | None, field: str) -> str:
    """A user-given path, stripped; InvalidArgument naming ``field`` when empty or containing NUL."""
    text = (path or "").strip()
    if not text:
        raise InvalidArgument(f"{field}: a path is required", field=field)
    if "\x00" in text:
        raise InvalidArgument(f"{field}: contains a NUL byte", field=field)
    return text


_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    # os.umask can only be read by setting it; done under a lock so no other thread sees the 0 in between.
    with _UMASK_LOCK:
        mask = os.umask(0)
        os.umask(mask)
    return mask


def atomic_write(path: Path, data: bytes) -> None:
    """Write via a temp file and rename; the file gets ``0o666 & ~umask`` like a plain ``open`` would
    (mkstemp creates 0600, which other readers of a shared volume cannot open)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def yaml_bytes(data: Any) -> bytes:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True).encode("utf-8")


class Roots:
    """The worker's directories (all resolved) and the path checks against them.

    Also what trainers get as their :class:`~cuvis_cluster.engine.types.TrainResources`.
    """

    def __init__(self, config: EngineConfig) -> None:
        self.configs_dir = Path(config.configs_dir).expanduser().resolve()
        self.data_dir = Path(config.data_dir).expanduser().resolve()
        self.output_dir = Path(config.output_dir).expanduser().resolve()
        self.extra_roots = [Path(p).expanduser().resolve() for p in config.extra_roots]

    @property
    def allowed(self) -> list[Path]:
        """Directories that config search paths and server-side files may lie in."""
        roots = [self.configs_dir, self.data_dir, self.output_dir, *self.extra_roots]
        return list(dict.fromkeys(roots))

    def default_search_paths(self) -> list[Path]:
        return [self.configs_dir]

    @property
    def pipeline_configs(self) -> Path:
        """The folder ListAvailablePipelines and GetPipelineInfo look in."""
        return self.configs_dir / "pipeline"

    def data_roots(self) -> DataRoots:
        return DataRoots([self.data_dir, *self.extra_roots])

    def build_datamodule(self, data_config: Mapping[str, Any] | None) -> DataModule:
        """The data module for a DataConfig (JSON form), confined to the data roots."""
        if not data_config:
            raise InvalidArgument("data: no data config", field="data")
        return build_datamodule(dict(data_config), self.data_roots())

    def search_dirs(self, paths: Iterable[str]) -> tuple[list[Path], list[str]]:
        """(accepted, rejected) for requested search paths: existing directories inside the roots,
        absolute or relative to any root."""
        roots = self.allowed
        accepted: list[Path] = []
        rejected: list[str] = []
        for raw in paths:
            text = str(raw or "").strip()
            if not text or "\x00" in text:
                rejected.append(str(raw))
                continue
            p = Path(text).expanduser()
            options = [p] if p.is_absolute() else [r / p for r in roots]
            chosen = None
            for option in options:
                try:
                    real = option.resolve()
                except (OSError, RuntimeError):
                    continue
                if real.is_dir() and inside(real, roots):
                    chosen = real
                    break
            if chosen is None:
                rejected.append(text)
            else:
                accepted.append(chosen)
        return accepted, rejected

    def output_file(self, path: str, field: str, suffixes: tuple[str, ...] = (".yaml", ".yml")) -> Path:
        """A writable path under output_dir for ``path`` (relative to it, or absolute inside it)."""
        text = path_text(path, field)
        p = Path(text).expanduser()
        if text.endswith(("/", os.sep)) or p.name in ("", ".", ".."):
            raise InvalidArgument(f"{field}: {text!r} does not name a file", field=field)
        given = p if p.is_absolute() else self.output_dir / p
        if given.is_dir():
            raise InvalidArgument(f"{field}: {text!r} is a directory", field=field)
        if p.suffix not in suffixes:
            if p.suffix and p.suffix != ".pt":
                raise InvalidArgument(
                    f"{field}: {text!r} must end in {' or '.join(suffixes)} (or have no suffix)", field=field
                )
            p = p.with_suffix(suffixes[0]) if p.suffix == ".pt" else p.with_name(p.name + suffixes[0])
        target = p if p.is_absolute() else self.output_dir / p
        real = target.resolve()
        if not inside(real, [self.output_dir]):
            raise PermissionDenied(
                f"{field}: {text!r} lies outside the output root {self.output_dir}; "
                "use a path relative to it",
                field=field,
            )
        if real.exists() and real.is_dir():
            raise InvalidArgument(f"{field}: {text!r} is a directory", field=field)
        return real

    def find_file(self, text: str, bases: Iterable[Path], field: str, suffix: str) -> Path:
        """An existing file for ``text`` (relative: first base that has it), confined to the roots."""
        text = path_text(text, field)
        p = Path(text).expanduser()
        if not p.suffix:
            p = p.with_name(p.name + suffix)
        base_dirs = [Path(b) for b in bases]
        allowed = [b.resolve() for b in [*base_dirs, *self.allowed]]
        candidates = [p] if p.is_absolute() else [b / p for b in base_dirs]
        for cand in candidates:
            real = cand.resolve()
            if not inside(real, allowed):
                raise PermissionDenied(f"{field}: {text!r} lies outside the allowed roots", field=field)
            if real.is_file():
                return real
        raise NotFound(f"{field}: {text!r} not found", field=field)
