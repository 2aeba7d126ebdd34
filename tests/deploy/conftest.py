"""Fixtures of the deployment tests: the external tools and the chart rendered over the values matrix.

Tools are found by :func:`cuvis_cluster.deploy.tools.find_tool`: ``$CUVIS_HELM`` / ``$CUVIS_KUBECTL`` /
``$CUVIS_PROMTOOL``, then ``.cache/tools/bin/``, then ``PATH``. A missing tool skips its tests with the
install command as the reason, except under ``CI=true``, where it fails them: CI must not go green by
skipping the checks.
"""

from __future__ import annotations

import pytest
import yaml
from _deploy_support import CHART, CI_VALUES, Rendering, matrix_name, run, tool


@pytest.fixture(scope="session")
def helm() -> str:
    return tool("helm")


@pytest.fixture(scope="session")
def kubectl() -> str:
    return tool("kubectl")


@pytest.fixture(scope="session")
def promtool() -> str:
    return tool("promtool")


@pytest.fixture(scope="session")
def renderings(helm) -> dict[str, Rendering]:
    """Every ci/*-values.yaml rendered once per test session (about 0.2 s each)."""
    out = {}
    for path in CI_VALUES:
        proc = run([helm, "template", "cuvis", str(CHART), "--namespace", "ai", "--values", str(path)])
        assert proc.returncode == 0, f"helm template -f {path.name} failed:\n{proc.stderr}"
        objects = [doc for doc in yaml.safe_load_all(proc.stdout) if doc]
        out[matrix_name(path)] = Rendering(matrix_name(path), path, proc.stdout, objects)
    return out


@pytest.fixture(scope="session")
def defaults(renderings) -> Rendering:
    return renderings["default"]
