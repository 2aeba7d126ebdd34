"""Hostile HTTP/2 clients against cuvis-gateway and nginx grpc_pass, side by side in one run.

    .venv/bin/python bench/h2_attacks.py                # full-size attacks, 3 runs
    .venv/bin/python bench/h2_attacks.py --quick        # smaller attacks, 1 run
    .venv/bin/python bench/h2_attacks.py --gateway-src /tmp/before/services   # another engine
    .venv/bin/python bench/h2_attacks.py --conformance  # the RFC 9113 table (tests) against both

Everything runs on 127.0.0.1: a real redis-server, one stand-in worker (tests/gateway/standin_worker.py),
``cuvis-gateway`` with its default settings (what a deployer gets) and nginx (Debian package) with
``grpc_pass`` to the same worker, started as bench/gateway_bench.py starts them. ``--gateway-src`` runs the
gateway from another copy of the package (e.g. ``git archive HEAD services | tar -x -C /tmp/before``)
to measure an older engine with the same bench.

The attacks are those of tests/gateway/h2attacks.py (rapid reset, stream flood, CONTINUATION flood,
SETTINGS and PING floods, a PING flood whose acks are never read, a 2^24-1 byte frame, a 1 MB gzip
bomb inflating to 1 GiB, stream id reuse),
each on a fresh connection, bounded by a frame count and a deadline. For each attack and proxy:

* cut off: how the attacker's connection ended (GOAWAY code, close); the frames it wrote before it
  saw that, and those the proxy demonstrably handled (its acks, streams below its GOAWAY's last id);
* memory: peak growth of the proxy's resident memory during the attack (gateway process; nginx's
  worker processes), sampled every 10 ms;
* canary: errors, p99 and worst latency of small health-check calls made on another connection by a
  grpc-python channel (5 s deadline), counting every call started from the attack's start until one
  second after its end, however long it then took (a failed call counts as the whole deadline).
  Through nginx the health check is answered by the worker, through the gateway by the gateway
  itself: an attack nginx forwards (the bomb) shows up as the worker's stall in nginx's column.

Runs are interleaved (each attack against each proxy, then the next attack) so machine noise lands on
both; with several runs the table shows the median and the range.

``--conformance`` instead runs the RFC 9113 table of tests/gateway/test_h2_conformance.py against both
proxies with their default settings (a case whose limit the server sets too high to cross is "n/a").
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "bench"), str(REPO / "tests" / "gateway")]

import h2attacks  # noqa: E402  (tests/gateway: the attacks the hostile tests run)
from gateway_bench import NGINX_CONF, STANDIN, VENV_BIN, Rig, wait_port  # noqa: E402
from h2attacks import AttackResult, Canary  # noqa: E402
from h2cases import run_case  # noqa: E402
from h2peer import MemoryWatch, children_of  # noqa: E402
from h2table import CASES  # noqa: E402

from cuvis_cluster.common.ports import free_port  # noqa: E402


def start(rig: Rig, gateway_src: Path | None) -> dict[str, tuple[str, Callable[[], list[int]]]]:
    """redis, a stand-in worker, the gateway and nginx; name -> (address, pids whose memory counts)."""
    redis_port = free_port()
    redis = shutil.which("redis-server")
    if redis is None:
        raise SystemExit("redis-server not found (apt-get install --no-install-recommends redis-server)")
    p = rig.spawn("redis", [redis, "--bind", "127.0.0.1", "--port", str(redis_port), "--save", ""])
    wait_port(redis_port, p, "redis-server")
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    worker_port = free_port()
    argv = [sys.executable, str(STANDIN), "--listen", f"127.0.0.1:{worker_port}", "--redis-url", redis_url]
    p = rig.spawn("worker", [*argv, "--heartbeat-seconds", "2", "--heartbeat-ttl-seconds", "6"])
    wait_port(worker_port, p, "worker")

    targets: dict[str, tuple[str, Callable[[], list[int]]]] = {}
    gw_port = free_port()
    # `env` execs the gateway, so the pid is the gateway's own.
    prefix = ["env", f"PYTHONPATH={gateway_src}"] if gateway_src else []
    gw = rig.spawn(
        "gateway",
        [
            *prefix,
            str(VENV_BIN / "cuvis-gateway"),
            "--listen",
            f"127.0.0.1:{gw_port}",
            "--redis-url",
            redis_url,
            "--log-level",
            "WARNING",
        ],
    )
    wait_port(gw_port, gw, "gateway")
    targets["cuvis-gateway"] = (f"127.0.0.1:{gw_port}", lambda: [gw.pid])

    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx is None:
        print("nginx not found (apt-get install nginx-light); no nginx column", file=sys.stderr)
        return targets
    port = free_port()
    conf = rig.dir / "nginx.conf"
    user = "user root;" if os.geteuid() == 0 else ""
    conf.write_text(NGINX_CONF.format(dir=rig.dir, port=port, upstream=f"127.0.0.1:{worker_port}", user=user))
    ng = rig.spawn("nginx", [nginx, "-c", str(conf), "-p", str(rig.dir)])
    wait_port(port, ng, "nginx")
    targets["nginx grpc_pass"] = (f"127.0.0.1:{port}", lambda: children_of(ng.pid))
    return targets


def attacks(quick: bool, bomb: bytes) -> dict[str, Callable[[str], AttackResult]]:
    s = 5.0 if quick else 10.0
    k = 10 if quick else 1
    return {
        "rapid reset": lambda a: h2attacks.rapid_reset(a, streams=20000 // k, seconds=s),
        "stream flood": lambda a: h2attacks.stream_flood(a, streams=3000 // (k // 3 or 1), seconds=s),
        "CONTINUATION flood": lambda a: h2attacks.continuation_flood(a, frames=2_000_000 // k, seconds=s),
        "SETTINGS flood": lambda a: h2attacks.settings_flood(a, frames=200_000 // k, seconds=s),
        "PING flood": lambda a: h2attacks.ping_flood(a, frames=200_000 // k, seconds=s),
        "PING flood, acks unread": lambda a: h2attacks.unread_ping_flood(a, frames=400_000 // k, seconds=s),
        "2^24-1 byte frame": lambda a: h2attacks.oversized_frame(a, seconds=s),
        "gzip bomb 1 MB -> 1 GiB": lambda a: h2attacks.compression_bomb(a, bomb, seconds=2 * s),
        "stream id reuse": h2attacks.stream_id_reuse,
    }


@dataclass
class Row:
    result: AttackResult
    memory_mib: float
    canary_calls: int
    canary_errors: int
    canary_p99_ms: float
    canary_max_ms: float
    first_error: str


def measure(address: str, pids: list[int], attack: Callable[[str], AttackResult]) -> Row:
    """One attack with the canary and the memory watch on.

    The canary's calls that *start* between the attack's start and one second after its end are
    judged, however long they take: a proxy that stalls shows as one slow (or failed) call, not as
    a gap in the samples.
    """
    with Canary(address) as canary, MemoryWatch(pids) as memory:
        deadline = time.monotonic() + 30
        while len(canary.calls) < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        e0 = len(canary.errors)
        t0 = time.monotonic()
        result = attack(address)
        t1 = time.monotonic() + 1.0
        time.sleep(1.0)
        calls = canary.started_between(t0, t1, wait=canary.deadline + 5)
        errors = canary.errors[e0:]
    # A failed call (a deadline exceeded, mostly) counts as taking the canary's whole deadline.
    times = sorted(canary.deadline if latency is None else latency for _, latency in calls)
    failed = sum(1 for _, latency in calls if latency is None)
    p99 = times[min(int(len(times) * 0.99), len(times) - 1)] * 1e3 if times else float("nan")
    worst = times[-1] * 1e3 if times else float("nan")
    return Row(result, memory.peak_growth_kib / 1024, len(calls), failed, p99, worst, (errors or [""])[0])


def spread(values: list[float], fmt: str) -> str:
    values = [v for v in values if v == v]  # no NaN: a run with no canary call in the window
    if not values:
        return "-"
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.median(values), fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def report(rows: dict[tuple[str, str], list[Row]], targets: list[str], runs: int, label: str) -> None:
    print(f"\n{label}: {runs} run(s); machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    head = (
        "| attack | proxy | attacker cut off | frames written | handled | memory growth MiB "
        "| canary errors | canary p99 ms | canary max ms |\n|---|---|---|---|---|---|---|---|---|"
    )
    print(head)
    for (name, target), rs in rows.items():
        hows = sorted({r.result.how for r in rs})
        frames = spread([float(r.result.frames_sent) for r in rs], ".0f")
        handled_values = [float(r.result.handled) for r in rs if r.result.handled is not None]
        handled = spread(handled_values, ".0f") if handled_values else "-"
        memory = spread([r.memory_mib for r in rs], ".1f")
        errors = (
            "/".join(str(r.canary_errors) for r in rs) + " of " + "/".join(str(r.canary_calls) for r in rs)
        )
        p99 = spread([r.canary_p99_ms for r in rs], ".1f")
        worst = spread([r.canary_max_ms for r in rs], ".0f")
        print(
            f"| {name} | {target} | {'; '.join(hows)} | {frames} | {handled} | {memory} | {errors} "
            f"| {p99} | {worst} |"
        )
    print("\nnotes (last run):")
    for (name, target), rs in rows.items():
        r = rs[-1]
        err = f"; canary error: {r.first_error}" if r.first_error else ""
        print(f"  {name} / {target}: {r.result.note}{err} ({r.result.seconds:.2f}s)")


def conformance(targets: dict[str, tuple[str, Callable[[], list[int]]]]) -> None:
    """The RFC 9113 table against every proxy: pass counts, then each case where they differ or fail."""
    verdicts = {name: [run_case(address, case) for case in CASES] for name, (address, _) in targets.items()}
    names = list(targets)
    print(f"\n| RFC 9113 section: case | {' | '.join(names)} |\n|---|{'---|' * len(names)}")
    for i, case in enumerate(CASES):
        marks = [
            "pass" if v[i].passed else ("n/a" if not v[i].applicable else "FAIL") for v in verdicts.values()
        ]
        if any(m != "pass" for m in marks):
            print(f"| {case.section}: {case.must} | {' | '.join(marks)} |")
    for name, vs in verdicts.items():
        applicable = [v for v in vs if v.applicable]
        print(f"{name}: {sum(v.passed for v in applicable)} of {len(applicable)} applicable cases pass")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="attacks a tenth of full size, 1 run")
    parser.add_argument("--runs", type=int, help="runs of every attack against every proxy [3; quick: 1]")
    parser.add_argument("--gateway-src", type=Path, help="directory holding the cuvis_cluster package to run")
    parser.add_argument("--label", default="cuvis-gateway vs nginx grpc_pass")
    parser.add_argument("--only", help="comma-separated attack names to run (substring match)")
    parser.add_argument("--conformance", action="store_true", help="run the RFC 9113 table instead")
    args = parser.parse_args()
    runs = args.runs or (1 if args.quick else 3)
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    bomb = h2attacks.gzip_bomb()
    workdir = Path(tempfile.mkdtemp(prefix="h2-attacks-"))
    rig = Rig(workdir)
    rows: dict[tuple[str, str], list[Row]] = {}
    try:
        targets = start(rig, args.gateway_src)
        for address, _ in targets.values():
            Canary(address).channel.close()  # waits until the proxy accepts calls
        if args.conformance:
            conformance(targets)
            return
        selected = attacks(args.quick, bomb)
        if args.only:
            keys = [k.strip().lower() for k in args.only.split(",")]
            selected = {n: a for n, a in selected.items() if any(k in n.lower() for k in keys)}
        for run in range(runs):
            for name, attack in selected.items():
                for target, (address, pids) in targets.items():
                    row = measure(address, pids(), attack)
                    rows.setdefault((name, target), []).append(row)
                    r = row.result
                    print(
                        f"run {run + 1} {name:24} {target:16} {r.how:32} "
                        f"frames {r.frames_sent:>8} ({r.handled}) "
                        f"mem +{row.memory_mib:6.1f} MiB canary {row.canary_errors} err "
                        f"p99 {row.canary_p99_ms:7.1f} ms max {row.canary_max_ms:7.0f} ms",
                        flush=True,
                    )
        report(rows, list(targets), runs, args.label)
    finally:
        rig.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
