"""`buf lint` is clean on proto/ with proto/buf.yaml.

buf comes from npm (`@bufbuild/buf`). The binary is looked up in `$CUVIS_BUF`, then
`.cache/npm/node_modules/.bin/buf` (where the README test command installs it), then PATH.
When it is missing the tests fail under CI (`CI=true`) and skip locally.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROTO = REPO / "proto"
INSTALL_HINT = "mkdir -p .cache/npm && cd .cache/npm && npm init -y >/dev/null && npm install @bufbuild/buf"


def _find_buf() -> str | None:
    explicit = os.environ.get("CUVIS_BUF")
    if explicit:
        return explicit
    cached = REPO / ".cache" / "npm" / "node_modules" / ".bin" / "buf"
    if cached.is_file():
        return str(cached)
    return shutil.which("buf")


@pytest.fixture(scope="module")
def buf() -> str:
    found = _find_buf()
    if found is None:
        message = (
            f"buf not found ($CUVIS_BUF, .cache/npm/node_modules/.bin/buf, PATH); install: {INSTALL_HINT}"
        )
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(message)
        pytest.skip(message)
    return found


def _lint(buf: str, root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([buf, "lint"], cwd=root, capture_output=True, text=True, timeout=120)


def test_buf_lint_clean(buf: str) -> None:
    proc = _lint(buf, PROTO)
    assert proc.returncode == 0, f"buf lint failed:\n{proc.stdout}{proc.stderr}"


def test_buf_lint_enforces_comments_and_naming(buf: str, tmp_path: Path) -> None:
    """The config is live: an undocumented message and a badly named service are reported."""
    copy = tmp_path / "proto"
    shutil.copytree(PROTO, copy)
    control = copy / "cuvis_cluster" / "internal" / "v1" / "control.proto"
    text = control.read_text()
    text = text.replace("// Request of ListWorkers; it takes no parameters.\n", "")
    text = text.replace("service ClusterStatusService {", "service ClusterStatus {")
    control.write_text(text)
    proc = _lint(buf, copy)
    assert proc.returncode != 0
    assert 'Message "ListWorkersRequest" should have a non-empty comment' in proc.stdout
    assert 'Service name "ClusterStatus" should be suffixed with "Service"' in proc.stdout
