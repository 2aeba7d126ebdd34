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

from cuvis_cluster.engine.bounds import NAME_MAX, PATH_MAX, check_path, client_path, shown
from cuvis_cluster.engine.data import DataModule, DataRoots, build_datamodule
from cuvis_cluster.engine.types import EngineConfig
from cuvis_cluster.errors import CuvisError, InvalidArgument, NotFound, PermissionDenied


def inside(real: Path, dirs: Iterable[Path]) -> bool:
    """Whether the resolved path ``real`` is one of ``dirs`` or lies below one."""
    return any(real == d or real.is_relative_to(d) for d in dirs)


def path_text(path: str | None, field: str) -> str:
    """A user-given path, stripped; InvalidArgument naming ``field`` when empty or not a path the file
    system can take (:func:`.bounds.check_path`: NUL, lone surrogates, too long)."""
    text = (path or "").strip()
    if not text:
        raise InvalidArgument(f"{field}: a path is required", field=field)
    return check_path(text, field)


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
    # The temp name adds a dot and 8 random characters: shorten the prefix so that a name that fits
    # NAME_MAX itself still gets a temp file.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:200]}.", dir=str(path.parent))
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
            try:
                chosen = self._search_dir(path_text(text, "search_paths"), roots)
            except CuvisError:  # not a path at all (NUL, too long): rejected like one outside the roots
                chosen = None
            if chosen is None:
                rejected.append(text)
            else:
                accepted.append(chosen)
        return accepted, rejected

    @staticmethod
    def _search_dir(text: str, roots: list[Path]) -> Path | None:
        with client_path("search_paths", text):
            p = Path(text).expanduser()
        options = [p] if p.is_absolute() else [r / p for r in roots]
        for option in options:
            try:
                with client_path("search_paths", text):
                    real = option.resolve()
                    if real.is_dir() and inside(real, roots):
                        return real
            except CuvisError:  # too long once joined to this root, a symlink loop: try the next root
                continue
        return None

    def output_file(self, path: str, field: str, suffixes: tuple[str, ...] = (".yaml", ".yml")) -> Path:
        """A writable path under output_dir for ``path`` (relative to it, or absolute inside it)."""
        text = path_text(path, field)
        with client_path(field, text):
            return self._output_file(text, field, suffixes)

    def _output_file(self, text: str, field: str, suffixes: tuple[str, ...]) -> Path:
        p = Path(text).expanduser()
        if text.endswith(("/", os.sep)) or p.name in ("", ".", ".."):
            raise InvalidArgument(f"{field}: {shown(text)} does not name a file", field=field)
        given = p if p.is_absolute() else self.output_dir / p
        if given.is_dir():
            raise InvalidArgument(f"{field}: {shown(text)} is a directory", field=field)
        if p.suffix not in suffixes:
            if p.suffix and p.suffix != ".pt":
                raise InvalidArgument(
                    f"{field}: {shown(text)} must end in {' or '.join(suffixes)} (or have no suffix)",
                    field=field,
                )
            p = p.with_suffix(suffixes[0]) if p.suffix == ".pt" else p.with_name(p.name + suffixes[0])
        target = p if p.is_absolute() else self.output_dir / p
        real = target.resolve()
        if not inside(real, [self.output_dir]):
            raise PermissionDenied(
                f"{field}: {shown(text)} lies outside the output root {self.output_dir}; "
                "use a path relative to it",
                field=field,
            )
        if real.exists() and real.is_dir():
            raise InvalidArgument(f"{field}: {shown(text)} is a directory", field=field)
        return real

    @staticmethod
    def sibling(file: Path, name: str, field: str, text: str) -> Path:
        """``file.with_name(name)`` for a file written next to an output file (SaveTrainRun's pipeline and
        weights); InvalidArgument naming ``field`` when the longer name no longer fits the file system,
        so the save fails before it writes anything rather than halfway."""
        path = file.with_name(name)
        if len(name.encode("utf-8")) > NAME_MAX or len(str(path).encode("utf-8")) >= PATH_MAX:
            raise InvalidArgument(
                f"{field}: {shown(text)} is too long for the files written next to it ({name[:40]}...)",
                field=field,
            )
        return path

    def find_file(self, text: str, bases: Iterable[Path], field: str, suffix: str) -> Path:
        """An existing file for ``text`` (relative: first base that has it), confined to the roots."""
        text = path_text(text, field)
        with client_path(field, text):
            return self._find_file(text, bases, field, suffix)

    def _find_file(self, text: str, bases: Iterable[Path], field: str, suffix: str) -> Path:
        p = Path(text).expanduser()
        if p.name in ("", ".", ".."):
            raise InvalidArgument(f"{field}: {shown(text)} does not name a file", field=field)
        if not p.suffix:
            p = p.with_name(p.name + suffix)
        base_dirs = [Path(b) for b in bases]
        allowed = [b.resolve() for b in [*base_dirs, *self.allowed]]
        candidates = [p] if p.is_absolute() else [b / p for b in base_dirs]
        for cand in candidates:
            real = cand.resolve()
            if not inside(real, allowed):
                raise PermissionDenied(f"{field}: {shown(text)} lies outside the allowed roots", field=field)
            if real.is_file():
                return real
        raise NotFound(f"{field}: {shown(text)} not found", field=field)
