"""Every ``cuvis-ai`` subcommand end to end: the console script against a real local cluster."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from clusters import EXAMPLES
from helpers.procs import VENV_BIN, free_port
from PIL import Image

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SMALL = ["-o", "data.params.height=16", "-o", "data.params.width=16"]


def cli(cluster, *argv: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(VENV_BIN / "cuvis-ai"), "--address", cluster.address, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(cluster.workdir),
        check=False,
    )


def ok(proc) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def trained(module_cluster):
    """A saved rx_statistical train run (server paths)."""
    out = ok(cli(module_cluster, "train", "rx_statistical", *SMALL, "--save", "cli-e2e/rx"))
    paths = dict(re.findall(r"^saved (train run|pipeline|weights):\s+(\S+)$", out, re.M))
    return paths


@pytest.fixture(scope="module")
def frame_npz(tmp_path_factory) -> Path:
    sys.path.insert(0, str(EXAMPLES))
    from _common import synthetic_frames

    frames = synthetic_frames([9], 24)
    path = tmp_path_factory.mktemp("inputs") / "frame9.npz"
    np.savez(path, cube=frames["cube"][0], wavelengths=frames["wavelengths"], mask=frames["mask"][0])
    return path


def test_health(module_cluster):
    assert f"{module_cluster.address}: SERVING" in ok(cli(module_cluster, "health"))


def test_workers(module_cluster):
    out = ok(cli(module_cluster, "workers"))
    assert "2 worker(s)" in out and "cpu" in out
    listed = json.loads(ok(cli(module_cluster, "workers", "--json")))
    assert len(listed) == 2 and all(w["capacity"] for w in listed)


def test_pipelines_list_and_info(module_cluster):
    out = ok(cli(module_cluster, "pipelines", "list"))
    assert "rx_statistical.yaml" in out and "deep_svdd.yaml" in out
    assert "channel_selector" not in ok(cli(module_cluster, "pipelines", "list", "--tag", "statistical"))
    info = ok(cli(module_cluster, "pipelines", "info", "rx_statistical"))
    assert "name:        rx_statistical" in info
    assert "class_name: cuvis_ai.node.anomaly.rx_detector.RXGlobal" in info


def test_train_with_progress_and_save(module_cluster, trained):
    assert set(trained) == {"train run", "pipeline", "weights"}
    assert all(Path(p).is_file() for p in trained.values())


def test_train_two_phase(module_cluster):
    argv = ["train", "channel_selector", *SMALL, "-o", "training.trainer.max_epochs=1", "--two-phase"]
    out = ok(cli(module_cluster, *argv))
    assert "[statistical] COMPLETE" in out and "[gradient] COMPLETE" in out


def test_infer_writes_outputs_and_pictures(module_cluster, trained, frame_npz, tmp_path):
    argv = ["infer", str(frame_npz), "--pipeline", "rx_statistical", "--weights", trained["weights"]]
    out = ok(cli(module_cluster, *argv, "--out", str(tmp_path)))
    assert "rx_detector.scores: float32[1, 24, 24, 1]" in out
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {"frame9_outputs.npz", "frame9_heatmap.png", "frame9_overlay.png"}
    for png in ("frame9_heatmap.png", "frame9_overlay.png"):
        with Image.open(tmp_path / png) as image:
            assert min(image.size) >= 100 and np.asarray(image.convert("RGB")).std() > 0


def test_infer_with_a_local_pipeline_file_and_uploaded_weights(module_cluster, trained, frame_npz, tmp_path):
    argv = ["infer", str(frame_npz), "--pipeline", trained["pipeline"], "--weights-file", trained["weights"]]
    ok(cli(module_cluster, *argv, "--out", str(tmp_path)))
    assert (tmp_path / "frame9_heatmap.png").is_file()


def test_visualize_svg(module_cluster, tmp_path):
    target = tmp_path / "rx.svg"
    ok(cli(module_cluster, "visualize", "rx_statistical", "--format", "svg", "--out", str(target)))
    import xml.etree.ElementTree as ET

    root = ET.parse(target).getroot()
    text = " ".join(t for t in root.itertext())
    assert root.tag.endswith("svg") and "rx_detector" in text


def test_restore_and_continue(module_cluster, trained):
    argv = [
        "restore",
        trained["train run"],
        "--weights",
        trained["weights"],
        "--continue",
        "--trainer",
        "statistical",
    ]
    out = ok(cli(module_cluster, *argv))
    inputs = next(line for line in out.splitlines() if line.startswith("inputs:  "))
    assert "restored" in out and "cube" in inputs.split(None, 1)[1].split(", ")
    assert "[statistical] COMPLETE" in out


def test_errors_map_to_exit_codes(module_cluster):
    missing = cli(module_cluster, "pipelines", "info", "no_such_pipeline")
    assert missing.returncode == 15 and "NOT_FOUND" in missing.stderr and "hint:" in missing.stderr
    bad = cli(module_cluster, "train", "rx_statistical", "-o", "data.batch_size=-3")
    assert bad.returncode == 13, bad.stderr  # INVALID_ARGUMENT naming the field
    assert "batch_size" in bad.stderr
    malformed = cli(module_cluster, "train", "rx_statistical", "-o", "data.params.height")
    assert malformed.returncode != 0 and "must look like key.path=value" in malformed.stderr
    assert "session" not in malformed.stdout  # refused before any call
    down = subprocess.run(
        [
            str(VENV_BIN / "cuvis-ai"),
            "--address",
            f"127.0.0.1:{free_port()}",
            "--connect-timeout",
            "1",
            "workers",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert down.returncode == 24 and "UNAVAILABLE" in down.stderr
