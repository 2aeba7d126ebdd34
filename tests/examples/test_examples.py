"""Every example runs green against a real local cluster (redis + 2 workers + gateway) on synthetic data."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from clusters import local_cluster_api, run_example
from PIL import Image

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SMALL = ["--size", "16"]


def _ok(proc) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc.stdout


def _png_with_content(path: Path) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) >= 100
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.std() > 0


def test_complete_workflow(module_cluster, tmp_path):
    out = _ok(run_example("complete_workflow", module_cluster, "--size", "32", "--out", str(tmp_path)))
    for step in (
        "1. resolved trainrun/rx_statistical",
        "[statistical] COMPLETE",
        "3. saved pipeline",
        "4. inference",
    ):
        assert step in out
    png = Path(re.search(r"^anomaly map PNG: (.+)$", out, re.M).group(1))
    assert png == tmp_path / "complete_workflow_heatmap.png"
    _png_with_content(png)
    _png_with_content(tmp_path / "complete_workflow_overlay.png")
    with np.load(tmp_path / "complete_workflow_outputs.npz") as outputs:
        assert outputs["rx_detector.scores"].shape == (1, 32, 32, 1)
    auc = float(re.search(r"pixel ROC-AUC\s+([0-9.]+)", out).group(1))
    assert auc > 0.5  # the detector finds the synthetic stones and brown lentils better than chance
    saved = re.search(r"server files\s+(\S+), (\S+)", out)
    assert Path(saved.group(1)).is_file() and Path(saved.group(2)).is_file()  # shared outputs volume


def test_statistical_training(module_cluster):
    out = _ok(run_example("statistical_training", module_cluster, *SMALL))
    assert "GetTrainStatus: COMPLETE" in out
    assert "returned only ['decider.decisions', 'rx_detector.scores']" in out


def test_two_phase_training(module_cluster):
    out = _ok(run_example("two_phase_training", module_cluster, *SMALL, "--epochs", "2"))
    assert "phase 1: statistical initialisation" in out and "[statistical] COMPLETE" in out
    assert "[gradient] COMPLETE" in out and "train loss: first" in out


def test_pretrained_inference(module_cluster, tmp_path):
    out = _ok(run_example("pretrained_inference", module_cluster, *SMALL, "--out", str(tmp_path)))
    assert "same scores as the training session: True" in out
    assert "input  cube" in out and "output rx_detector.scores" in out
    import xml.etree.ElementTree as ET

    assert ET.parse(tmp_path / "rx_statistical.svg").getroot().tag.endswith("svg")


def test_restore_and_continue(module_cluster):
    out = _ok(run_example("restore_and_continue", module_cluster, *SMALL))
    assert "restored outputs identical to session 1: True" in out
    assert "[gradient] COMPLETE" in out and "outputs changed: True" in out


def test_ab_testing_runs_concurrent_sessions(module_cluster):
    out = _ok(run_example("ab_testing", module_cluster, *SMALL))
    load = re.search(r"sessions per worker: (.+)$", out, re.M).group(1)
    assert sum(int(n) for n in re.findall(r": (\d+)", load)) >= 2  # both sessions open at once
    assert re.search(r"^A: .* pixel ROC-AUC [0-9.]+", out, re.M) and re.search(r"^B: .*ROC-AUC", out, re.M)
    assert "winner:" in out


def test_early_stopping_breaks_the_stream_and_frees_the_session(module_cluster):
    out = _ok(run_example("early_stopping", module_cluster, *SMALL, "--max-epochs", "2"))
    assert "GetTrainStatus: CANCELLED" in out
    assert "the session is usable again" in out


@pytest.mark.skipif(
    local_cluster_api() is None, reason="cuvis_cluster.localcluster.LocalCluster not available"
)
def test_complete_workflow_starts_its_own_local_cluster(tmp_path):
    import subprocess
    import sys

    from clusters import EXAMPLES

    proc = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "complete_workflow.py"),
            "--local-cluster",
            "1",
            "--size",
            "16",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=str(tmp_path),
    )
    out = _ok(proc)
    assert "local cluster: gateway" in out
    _png_with_content(tmp_path / "complete_workflow_heatmap.png")


def test_quickstart_python_snippet_runs(module_cluster, tmp_path):
    import subprocess
    import sys

    from clusters import REPO

    text = (REPO / "docs" / "quickstart.md").read_text()
    snippet = re.search(r"## 4\. The same from Python\n\n```python\n(.*?)```", text, re.S).group(1)
    snippet = snippet.replace("127.0.0.1:50050", module_cluster.address)
    proc = subprocess.run(
        [sys.executable, "-c", snippet],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(tmp_path),
        check=False,
    )
    out = _ok(proc)
    assert out.startswith("COMPLETE")
    _png_with_content(tmp_path / "scores.png")
