#!/usr/bin/env python
"""A/B testing with concurrent sessions: two pipeline variants train and infer at the same time.

    python examples/ab_testing.py --address 127.0.0.1:50050

Each variant gets its own session (the gateway places them on the least loaded workers), trains in its
own thread, and scores the same unseen frames; the variant with the higher pixel ROC-AUC wins.
"""

from __future__ import annotations

import sys
import threading
import time

import numpy as np
from _common import anomaly_truth, connected, data_overrides, parser, roc_auc, synthetic_frames

from cuvis_cluster.client import Client, errors
from cuvis_cluster.client.pictures import frame2d

VARIANTS = {"A: RX on all 61 bands": "rx_statistical", "B: RX on 3 selected bands": "channel_selector"}


def run_variant(
    client: Client,
    label: str,
    trainrun: str,
    args,
    frames,
    both_open: threading.Barrier,
    shown: threading.Event,
    out: dict,
) -> None:
    started = time.monotonic()
    try:
        with client.create_session() as session:
            out[label] = {"session": session.id}
            both_open.wait(60)  # the main thread looks at the placement while every session exists
            session.configure_trainrun(trainrun, data_overrides(args.size))
            stream = session.train("statistical", progress=False)
            stream.wait()
            result = session.infer(frames["cube"], frames["wavelengths"], output_specs=["scores"])
            _, scores = result.scores()
            aucs = [roc_auc(frame2d(scores, index=i), anomaly_truth(m)) for i, m in enumerate(frames["mask"])]
            seconds = time.monotonic() - started
            out[label].update(status=stream.status, auc=float(np.nanmean(aucs)), seconds=seconds)
            shown.wait(60)  # keep the session until the main thread has shown where it lives
    except (errors.CuvisError, threading.BrokenBarrierError) as exc:
        out[label] = {"error": f"{type(exc).__name__}: {exc}"}


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[1])
    args = p.parse_args(argv)
    frames = synthetic_frames([8, 9, 10, 11], args.size)
    results: dict[str, dict] = {}
    both_open = threading.Barrier(len(VARIANTS) + 1)
    shown = threading.Event()

    with connected(args) as client:
        threads = [
            threading.Thread(
                target=run_variant, args=(client, label, run, args, frames, both_open, shown, results)
            )
            for label, run in VARIANTS.items()
        ]
        for thread in threads:
            thread.start()
        try:
            both_open.wait(60)
            workers = client.list_workers()
            deadline = time.monotonic() + 15  # workers report their load with their heartbeat (every ~2 s)
            while sum(w.sessions for w in workers) < len(VARIANTS) and time.monotonic() < deadline:
                time.sleep(0.5)
                workers = client.list_workers()
            load = ", ".join(f"{w.address}: {w.sessions}" for w in workers)
            print(f"{len(VARIANTS)} sessions open; sessions per worker: {load}")
        except (errors.CuvisError, threading.BrokenBarrierError) as exc:
            print(f"placement not shown: {exc}")
        finally:
            shown.set()
        for thread in threads:
            thread.join(600)

    failed = False
    for label in VARIANTS:
        r = results.get(label, {"error": "did not finish"})
        if "error" in r or r.get("status") != "COMPLETE":
            print(f"{label}: FAILED {r.get('error', r.get('status'))}")
            failed = True
            continue
        print(f"{label}: pixel ROC-AUC {r['auc']:.3f} in {r['seconds']:.1f} s (session {r['session'][:8]})")
    if failed:
        return 1
    winner = max(VARIANTS, key=lambda k: results[k]["auc"])
    print(f"winner: {winner}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
