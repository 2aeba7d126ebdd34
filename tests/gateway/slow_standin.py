"""The stand-in worker with a slow CreateSession: ``--create-delay`` seconds pass between the call's
arrival and the session's creation, as in a real worker that sets a session up.

Run: ``python tests/gateway/slow_standin.py --create-delay 0.05 <standin_worker.py arguments>``
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import standin_worker


def main() -> int:
    args = sys.argv[1:]
    delay = 0.0
    if args[:1] == ["--create-delay"]:
        delay, args = float(args[1]), args[2:]
    create = standin_worker.Sessions.create

    def slow_create(self, owner):
        # The handler runs on while its call is cancelled, like any sync gRPC handler.
        time.sleep(delay)
        return create(self, owner)

    standin_worker.Sessions.create = slow_create
    return standin_worker.main(args)


if __name__ == "__main__":
    sys.exit(main())
