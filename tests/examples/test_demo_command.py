"""The README's main command: ``cuvis-cluster demo`` runs the complete workflow through a local cluster."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.integration


def test_demo_trains_infers_and_writes_an_anomaly_map(tmp_path):
    script = Path(sys.executable).parent / "cuvis-cluster"
    result = subprocess.run(
        [str(script), "demo", "--workers", "2", "--out", str(tmp_path), "--size", "32"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Statistical training complete" in result.stdout
    assert "cluster stopped" in result.stdout
    heatmap = Path(result.stdout.split("anomaly map PNG: ")[1].split()[0])
    assert heatmap.is_file() and heatmap.is_relative_to(tmp_path)
    pixels = np.asarray(Image.open(heatmap).convert("RGB"))
    assert pixels.shape[0] > 32 and pixels.shape[1] > 32
    assert pixels.std() > 5, "the anomaly map must not be a flat image"
