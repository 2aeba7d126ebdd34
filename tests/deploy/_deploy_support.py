"""Shared helpers of the deployment tests (a uniquely named module: tests/ has no packages)."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cuvis_cluster.deploy import render_k8s
from cuvis_cluster.deploy.tools import INSTALL_HINTS, env_var, find_tool

CHART = render_k8s.CHART
CI_VALUES = sorted(CHART.glob("ci/*-values.yaml"))
KUBE_VERSIONS = ("1.29.0", "1.33.0")
# Custom resources: kubernetes-validate has no schema for them and only warns.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "Certificate", "GRPCRoute"}


def missing_tool(name: str) -> None:
    """Skip (locally) or fail (CI=true) the calling test because ``name`` is not installed."""
    message = (
        f"{name} not found (${env_var(name)}, .cache/tools/bin, PATH); install: {INSTALL_HINTS.get(name, '')}"
    )
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def tool(name: str) -> str:
    path = find_tool(name)
    if path is None:
        missing_tool(name)
    return path


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120, **kwargs)


@dataclass
class Rendering:
    """One entry of the values matrix, rendered by ``helm template``."""

    name: str
    values: Path
    text: str
    objects: list[dict] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[dict]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, suffix: str) -> dict:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"].endswith(suffix)]
        assert len(found) == 1, (
            f"{self.name}: expected one {kind} *{suffix}, got {[o['metadata']['name'] for o in found]}"
        )
        return found[0]

    def container(self, component: str) -> dict:
        return self.get("Deployment", f"-{component}")["spec"]["template"]["spec"]["containers"][0]

    def env(self, component: str) -> dict[str, dict]:
        return {e["name"]: e for e in self.container(component).get("env", [])}


def matrix_name(path: Path) -> str:
    return path.name.removesuffix("-values.yaml")
