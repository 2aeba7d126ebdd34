"""``cuvis-ai`` against the in-process test server: output, files written, and exit codes per status."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from cuvis_cluster.client import cli
from cuvis_cluster.client._errors import exit_code_for

VENV_BIN = Path(sys.executable).parent


def run(address: str, *argv: str) -> int:
    return cli.main(["--address", address, "--connect-timeout", "5", *argv])


def test_health(fake, capsys):
    assert run(fake.address, "health") == 0
    assert f"{fake.address}: SERVING" in capsys.readouterr().out


def test_health_not_serving_exits_3(fake, capsys):
    from grpc_health.v1 import health_pb2

    fake.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert run(fake.address, "health") == 3
    assert "NOT_SERVING" in capsys.readouterr().out


def test_workers_table(fake, capsys):
    assert run(fake.address, "workers") == 0
    out = capsys.readouterr().out
    assert "ADDRESS" in out and "127.0.0.1:6001" in out and "cpu" in out and "0/16" in out
    assert "1 worker(s)" in out


def test_pipelines_list_and_info(fake, capsys):
    assert run(fake.address, "pipelines", "list", "--tag", "gradient") == 0
    out = capsys.readouterr().out
    assert "deep_svdd.yaml" in out and "rx_statistical" not in out and "1 pipeline(s)" in out
    assert run(fake.address, "pipelines", "info", "rx_statistical") == 0
    out = capsys.readouterr().out
    assert "name:        rx_statistical" in out and "nodes: []" in out


def test_not_found_exits_15_with_a_hint(fake, capsys):
    assert run(fake.address, "pipelines", "info", "nope") == exit_code_for(grpc.StatusCode.NOT_FOUND) == 15
    err = capsys.readouterr().err
    assert "GetPipelineInfo failed: NOT_FOUND: pipeline nope.yaml not found" in err
    assert "hint:" in err


def test_unreachable_exits_24(capsys):
    from helpers.procs import free_port

    assert cli.main(["--address", f"127.0.0.1:{free_port()}", "--connect-timeout", "0.5", "workers"]) == 24
    assert "UNAVAILABLE" in capsys.readouterr().err


def test_train_and_save(fake, capsys):
    argv = ["train", "rx_statistical", "-o", "steps=3", "--save", "runs/rx", "--no-progress"]
    assert run(fake.address, *argv) == 0
    out = capsys.readouterr().out
    assert "[statistical] COMPLETE" in out
    assert "saved train run: /out/runs/rx.yaml" in out and "saved weights:   /out/runs/rx.pt" in out
    assert not fake.service.sessions  # the CLI closed its session


def test_train_two_phase_runs_both_trainers(fake, capsys):
    assert run(fake.address, "train", "rx_statistical", "-o", "steps=2", "--two-phase", "--no-progress") == 0
    out = capsys.readouterr().out
    assert "[statistical] COMPLETE" in out and "[gradient] COMPLETE" in out
    assert fake.service.calls["Train"] == 2


def test_train_failure_maps_to_exit_code(fake, capsys):
    assert run(fake.address, "train", "rx_statistical", "-o", "fail_at=1", "--no-progress") == 13
    assert "INVALID_ARGUMENT" in capsys.readouterr().err


def test_bad_override_is_a_local_error(fake, capsys):
    assert run(fake.address, "train", "rx_statistical", "-o", "oops") == 1
    assert "key.path=value" in capsys.readouterr().err


def test_infer_writes_npz_heatmap_and_overlay(fake, tmp_path, capsys):
    rng = np.random.default_rng(0)
    cube = rng.integers(0, 3000, size=(16, 20, 61)).astype(np.uint16)
    np.savez(tmp_path / "frame.npz", cube=cube, wavelengths=np.linspace(430, 910, 61).astype(np.float32))
    out = tmp_path / "out"
    argv = ["infer", str(tmp_path / "frame.npz"), "-p", "rx_statistical", "-w", "w.pt", "--out", str(out)]
    assert run(fake.address, *argv) == 0
    printed = capsys.readouterr().out
    assert "rx.scores: float32[1, 16, 20, 1]" in printed
    assert {p.name for p in out.iterdir()} == {"frame_outputs.npz", "frame_heatmap.png", "frame_overlay.png"}
    for png in ("frame_heatmap.png", "frame_overlay.png"):
        with Image.open(out / png) as image:
            assert image.size[0] > 100 and np.asarray(image).std() > 0


def test_infer_missing_input_file(fake, tmp_path, capsys):
    argv = ["infer", str(tmp_path / "none.npz"), "--pipeline", "rx_statistical", "--out", str(tmp_path)]
    assert run(fake.address, *argv) == 1
    assert "does not exist" in capsys.readouterr().err


def test_visualize_svg(fake, tmp_path, capsys):
    target = tmp_path / "graph.svg"
    assert run(fake.address, "visualize", "rx_statistical", "--format", "svg", "--out", str(target)) == 0
    assert target.read_bytes().startswith(b"<?xml")
    assert f"wrote svg: {target}" in capsys.readouterr().out


def test_restore_and_continue(fake, capsys):
    argv = ["restore", "runs/rx.yaml", "--weights", "runs/rx.pt", "--continue", "--no-progress"]
    assert run(fake.address, *argv) == 0
    out = capsys.readouterr().out
    assert "restored runs/rx.yaml into session" in out and "inputs:  cube" in out
    assert "[gradient] COMPLETE" in out
    assert run(fake.address, "restore", "runs/missing.yaml") == 15


def test_exit_codes_table(capsys):
    assert cli.main(["exit-codes"]) == 0
    out = capsys.readouterr().out
    for code in grpc.StatusCode:
        if code is not grpc.StatusCode.OK:
            assert f"{exit_code_for(code)}" in out and code.name in out


def test_address_from_environment(fake, monkeypatch, capsys):
    monkeypatch.setenv("CUVIS_ADDRESS", fake.address)
    assert cli.main(["health"]) == 0
    assert fake.address in capsys.readouterr().out


def test_usage_errors_exit_2():
    with pytest.raises(SystemExit) as info:
        cli.main(["train"])
    assert info.value.code == 2


def test_console_script_runs(fake):
    proc = subprocess.run(
        [str(VENV_BIN / "cuvis-ai"), "--address", fake.address, "pipelines", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "rx_statistical.yaml" in proc.stdout
