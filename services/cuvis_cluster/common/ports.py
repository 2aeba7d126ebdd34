"""Free TCP ports for local clusters, benchmarks and tests.

Binding port 0 hands out a port from the kernel's ephemeral range, the same range from which every
outgoing connection takes its source port. A port learnt that way and bound a moment later by a child
process can meanwhile have become the source port of some client connection, and the child fails with
"address already in use". Ports chosen here lie below the ephemeral range, where the kernel never
assigns source ports, so only another listener can take them; each is checked free before it is given
out and never given out twice by one process.
"""

from __future__ import annotations

import random
import socket
import threading
from pathlib import Path

_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 10000
_given: set[int] = set()
_lock = threading.Lock()


def _ephemeral_low() -> int:
    try:
        low = int(_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default; other systems fall back to the kernel's choice below
    return low


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that is free now and outside the ephemeral range (see the module docstring)."""
    high = _ephemeral_low()
    with _lock:
        if high - _LOWEST >= 1000:
            for _ in range(200):
                port = random.randrange(_LOWEST, high)
                if port not in _given and _bindable(host, port):
                    _given.add(port)
                    return port
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        _given.add(port)
        return port
