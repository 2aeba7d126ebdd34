"""The tqdm bar appears when stderr is a terminal (a pseudo-terminal here) and nothing otherwise."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

SCRIPT = """
import sys
from cuvis_cluster.client import connect
with connect(sys.argv[1]) as client, client.create_session() as session:
    session.configure_trainrun("rx_statistical", ["steps=6", "delay=0.05"])
    last = session.train("statistical").wait()
print("final", last.status, flush=True)
"""


def _run_on_pty(address: str) -> tuple[int, str]:
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, address], stdin=slave, stdout=slave, stderr=slave, close_fds=True
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    return proc.wait(timeout=30), b"".join(chunks).decode(errors="replace")


def test_bar_is_drawn_on_a_terminal(fake):
    code, output = _run_on_pty(fake.address)
    assert code == 0, output
    assert "final 2" in output  # TRAIN_STATUS_COMPLETE
    assert "statistical" in output and "6/6" in output and "frame" in output
    assert "100%" in output and "|" in output


def test_nothing_is_drawn_without_a_terminal(fake):
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, fake.address], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "final 2"
    assert proc.stderr == ""
