"""Confinement of server-side paths to configured root directories.

Every path a client or a config names (data folders, .cu3s files, config search paths, output files)
goes through :meth:`DataRoots.resolve`. Symlinks are resolved before the check, so a link that points out
of the roots is refused just like ``..`` or an absolute path elsewhere.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from cuvis_cluster.engine.bounds import check_path, client_path, shown
from cuvis_cluster.errors import CuvisError, InvalidArgument, NotFound, PermissionDenied


class DataRoots:
    """An ordered set of allowed root directories.

    Relative paths are looked up under each root in order; the first root where the path exists wins,
    and a path that exists nowhere resolves under the first root (useful for outputs that are about to
    be written). Absolute paths are accepted only when they lie inside one of the roots.
    """

    def __init__(self, roots: Iterable[str | os.PathLike[str]]) -> None:
        resolved: list[Path] = []
        for root in roots:
            path = Path(root).expanduser().resolve()
            if path not in resolved:
                resolved.append(path)
        if not resolved:
            raise ValueError("DataRoots needs at least one root directory")
        self.roots: tuple[Path, ...] = tuple(resolved)

    def __repr__(self) -> str:
        return f"DataRoots({[str(r) for r in self.roots]})"

    def contains(self, path: str | os.PathLike[str]) -> bool:
        """Whether ``path`` (after resolving symlinks) lies inside one of the roots."""
        real = Path(path).expanduser().resolve()
        return any(real == root or real.is_relative_to(root) for root in self.roots)

    def resolve(
        self,
        path: str | os.PathLike[str],
        *,
        field: str = "path",
        must_exist: bool = False,
        relative_only: bool = False,
        escape_error: type[CuvisError] = PermissionDenied,
    ) -> Path:
        """The real path of ``path`` inside the roots.

        Raises ``InvalidArgument`` for an empty path, a NUL byte, or an absolute path when ``relative_only``;
        ``escape_error`` (PermissionDenied by default) when it leaves the roots; ``NotFound`` when
        ``must_exist`` and nothing is there. Messages name ``field`` and the path as given.
        """
        text = os.fspath(path)
        if not isinstance(text, str) or not text.strip():
            raise InvalidArgument(f"{field}: path is empty", field=field)
        check_path(text, field)
        with client_path(field, text):
            return self._resolve(text, field, must_exist, relative_only, escape_error)

    def _resolve(
        self, text: str, field: str, must_exist: bool, relative_only: bool, escape_error: type[CuvisError]
    ) -> Path:
        candidate = Path(text).expanduser()
        if candidate.is_absolute():
            if relative_only:
                raise InvalidArgument(
                    f"{field}: {shown(text)} must be a path relative to the configured roots", field=field
                )
            options = [candidate]
        else:
            options = [root / candidate for root in self.roots]
        chosen: Path | None = None
        for option in options:
            real = option.resolve()  # a symlink loop: InvalidArgument from client_path
            inside = any(real == root or real.is_relative_to(root) for root in self.roots)
            if not inside:
                raise escape_error(
                    f"{field}: {shown(text)} lies outside the allowed roots "
                    f"({', '.join(str(r) for r in self.roots)})",
                    field=field,
                )
            if chosen is None:
                chosen = real
            if real.exists():
                chosen = real
                break
        assert chosen is not None
        if must_exist and not chosen.exists():
            raise NotFound(f"{field}: {shown(text)} does not exist under the allowed roots", field=field)
        return chosen

    @classmethod
    def of(cls, roots: DataRoots | Sequence[str | os.PathLike[str]] | str | os.PathLike[str]) -> DataRoots:
        """Coerce a root, a list of roots or a DataRoots into a DataRoots."""
        if isinstance(roots, DataRoots):
            return roots
        if isinstance(roots, str | os.PathLike):
            return cls([roots])
        return cls(roots)
