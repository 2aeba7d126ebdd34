"""DataRoots: server-side paths stay inside the configured roots."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cuvis_cluster.engine.data.paths import DataRoots
from cuvis_cluster.errors import InvalidArgument, NotFound, PermissionDenied


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "data" / "sub").mkdir(parents=True)
    (tmp_path / "data" / "sub" / "f.npz").write_bytes(b"x")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "secret.txt").write_text("s")
    (tmp_path / "second").mkdir()
    (tmp_path / "second" / "only-here.txt").write_text("x")
    os.symlink(tmp_path / "other", tmp_path / "data" / "link-out")
    os.symlink(tmp_path / "data" / "sub", tmp_path / "data" / "link-in")
    return tmp_path


def test_relative_paths_resolve_inside(tree: Path) -> None:
    roots = DataRoots([tree / "data", tree / "second"])
    assert roots.resolve("sub/f.npz", must_exist=True) == tree / "data" / "sub" / "f.npz"
    assert roots.resolve("only-here.txt", must_exist=True) == tree / "second" / "only-here.txt"
    assert roots.resolve("link-in/f.npz", must_exist=True) == tree / "data" / "sub" / "f.npz"
    assert roots.resolve("new/out.yaml") == tree / "data" / "new" / "out.yaml"  # outputs may not exist yet
    assert roots.resolve(tree / "data" / "sub") == tree / "data" / "sub"  # absolute inside is fine
    assert roots.contains(tree / "data" / "sub") and not roots.contains(tree / "other")


@pytest.mark.parametrize(
    "path", ["../other/secret.txt", "sub/../../other", "link-out/secret.txt", "link-out"]
)
def test_escapes_are_refused_with_the_path_named(tree: Path, path: str) -> None:
    with pytest.raises(PermissionDenied) as info:
        DataRoots([tree / "data"]).resolve(path, field="data.params.path")
    assert path in str(info.value) and info.value.field == "data.params.path"


def test_absolute_outside_and_other_errors(tree: Path) -> None:
    roots = DataRoots([tree / "data"])
    with pytest.raises(PermissionDenied):
        roots.resolve(tree / "other" / "secret.txt")
    with pytest.raises(PermissionDenied):
        roots.resolve("/etc/passwd")
    with pytest.raises(InvalidArgument):
        roots.resolve(str(tree / "data"), relative_only=True)
    assert roots.resolve("sub", relative_only=True) == tree / "data" / "sub"
    with pytest.raises(InvalidArgument, match="NUL"):
        roots.resolve("a\x00b")
    with pytest.raises(InvalidArgument, match="empty"):
        roots.resolve("  ")
    with pytest.raises(NotFound):
        roots.resolve("sub/missing.npz", must_exist=True)
    with pytest.raises(InvalidArgument, match="outside"):
        roots.resolve("../other", escape_error=InvalidArgument)


segment = st.sampled_from(["..", ".", "sub", "link-out", "link-in", "x", "f.npz", "other", ""])


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=200)
@given(st.lists(segment, min_size=1, max_size=6))
def test_resolved_paths_never_leave_the_root(tree: Path, parts: list[str]) -> None:
    roots = DataRoots([tree / "data"])
    path = "/".join(parts)
    try:
        resolved = roots.resolve(path)
    except (PermissionDenied, InvalidArgument):
        return
    real_root = (tree / "data").resolve()
    assert resolved == real_root or resolved.is_relative_to(real_root)
