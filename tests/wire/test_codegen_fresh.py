"""The checked-in stubs are exactly what `python -m cuvis_cluster.wire.codegen` produces from proto/."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from cuvis_cluster.wire import codegen

REPO = Path(__file__).resolve().parents[2]


def _run_codegen(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cuvis_cluster.wire.codegen", *args],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO,
    )


def test_generated_stubs_are_fresh() -> None:
    proc = _run_codegen("--check")
    assert proc.returncode == 0, f"stale stubs:\n{proc.stdout}{proc.stderr}"


def test_generation_is_deterministic() -> None:
    assert codegen.generate() == codegen.generate()


def test_check_names_stale_files_after_a_proto_edit(tmp_path: Path) -> None:
    protos = tmp_path / "proto"
    shutil.copytree(REPO / "proto", protos)
    public = protos / "cuvis_ai" / "v1" / "cuvis_ai.proto"
    text = public.read_text()
    public.write_text(
        text.replace("  string author = 6;\n", "  string author = 6;\n  // New.\n  string email = 7;\n")
    )

    proc = _run_codegen("--check", "--proto-root", str(protos))
    assert proc.returncode == 1
    assert "changed: cuvis_ai/v1/cuvis_ai_pb2.py" in proc.stderr
    assert "changed: cuvis_ai/v1/cuvis_ai_pb2.pyi" in proc.stderr
    assert "changed: _descriptor_set.py" in proc.stderr
    assert "control_pb2" not in proc.stderr  # untouched files are not reported


def test_write_mode_converges_and_removes_orphans(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    out.mkdir()
    (out / "orphan_pb2.py").write_text("# left over from a deleted .proto\n")
    first = _run_codegen("--out", str(out))
    assert first.returncode == 0, first.stderr
    assert not (out / "orphan_pb2.py").exists()
    for rel in ("__init__.py", "cuvis_ai/v1/__init__.py", "cuvis_cluster/internal/v1/control_pb2_grpc.py"):
        assert (out / rel).is_file(), rel
    again = _run_codegen("--check", "--out", str(out))
    assert again.returncode == 0, again.stderr
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == sorted(
        codegen.generate()
    )


def test_cross_package_imports_become_relative(tmp_path: Path) -> None:
    """A proto importing one from another package still works once gen/ lives inside a Python package."""
    protos = tmp_path / "proto"
    (protos / "acme" / "base" / "v1").mkdir(parents=True)
    (protos / "acme" / "app" / "v1").mkdir(parents=True)
    (protos / "acme" / "base" / "v1" / "base.proto").write_text(
        'syntax = "proto3";\npackage acme.base.v1;\nmessage Thing { string name = 1; }\n'
    )
    (protos / "acme" / "app" / "v1" / "app.proto").write_text(
        'syntax = "proto3";\npackage acme.app.v1;\nimport "acme/base/v1/base.proto";\n'
        'import "google/protobuf/timestamp.proto";\n'
        "message Box { acme.base.v1.Thing thing = 1; google.protobuf.Timestamp at = 2; }\n"
        "service Shelf { rpc Put(Box) returns (acme.base.v1.Thing); }\n"
    )
    files = codegen.generate(protos)
    app = files["acme/app/v1/app_pb2.py"].decode()
    grpc_mod = files["acme/app/v1/app_pb2_grpc.py"].decode()
    assert "from ...base.v1 import base_pb2 as" in app
    assert "from google.protobuf import timestamp_pb2 as" in app  # well-known types stay absolute
    assert "from . import app_pb2 as" in grpc_mod
    assert "from ...base.v1 import base_pb2 as" in grpc_mod

    # Import the generated tree as a sub-package of a throwaway package, in a fresh interpreter.
    root = tmp_path / "site" / "throwaway_pkg" / "gen"
    for rel, content in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(content)
    (root.parent / "__init__.py").write_text("")
    script = textwrap.dedent(
        """
        from throwaway_pkg.gen.acme.app.v1 import app_pb2, app_pb2_grpc
        box = app_pb2.Box(thing={"name": "lentil"})
        assert app_pb2.Box.FromString(box.SerializeToString()).thing.name == "lentil"
        assert hasattr(app_pb2_grpc, "ShelfStub")
        print("ok")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=tmp_path / "site"
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_relative_import_arithmetic() -> None:
    rel = codegen._relative_from
    assert rel("cuvis_ai.v1.cuvis_ai_pb2_grpc", "cuvis_ai.v1.cuvis_ai_pb2") == (".", "cuvis_ai_pb2")
    assert rel("cuvis_cluster.internal.v1.control_pb2", "cuvis_ai.v1.cuvis_ai_pb2") == (
        "....cuvis_ai.v1",
        "cuvis_ai_pb2",
    )
    assert rel("a.b.x_pb2", "a.c.y_pb2") == ("..c", "y_pb2")
    assert rel("top_pb2_grpc", "top_pb2") == (".", "top_pb2")
