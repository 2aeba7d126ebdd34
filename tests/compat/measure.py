"""Upstream vs ours, measured (not a test; prints figures):

* ``import cuvis_ai.node``: wall time and the process's peak RSS, in a fresh interpreter;
* inference on upstream's RX pipeline (its inference part: data node, MinMaxNormalizer, RXGlobal,
  ScoreToLogit, BinaryDecider, fitted by upstream on small synthetic frames), 1x256x256x61 uint16 cube:
  time of upstream's ``CuvisPipeline.forward`` and of our Engine's Inference, interleaved in one process
  (median and spread over ``--reps``), and each engine's peak-RSS growth during inference in its own
  fresh process.

    .venv/bin/python tests/compat/measure.py [--reps 7] [--size 256]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
KEEP = ("LentilsAnomalyDataNode", "MinMaxNormalizer", "RXGlobal", "ScoreToLogit", "BinaryDecider")


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prepare(work: Path) -> tuple[Path, Path]:
    """Upstream's RX YAML reduced to its inference nodes, fitted and saved by upstream."""
    import upstream_side as up

    config = yaml.safe_load(up.shipped("anomaly/rx/rx_statistical").read_text())
    config["nodes"] = [n for n in config["nodes"] if n["name"] in KEEP]
    config["connections"] = [
        c
        for c in config["connections"]
        if c["source"].split(".")[0] in KEEP and c["target"].split(".")[0] in KEEP
    ]
    src = work / "rx_inference.yaml"
    src.write_text(yaml.safe_dump(config, sort_keys=False))
    with up.quiet(work):
        pipeline = up.load(src)
        up.fit_statistical(pipeline, up.datamodule())
        return up.save(pipeline, work / "rx_fitted.yaml")


def engines(work: Path, yaml_path: Path, pt: Path):
    import upstream_side as up
    from ours_side import Ours

    with up.quiet(work):
        theirs = up.load(yaml_path, pt, strict=True)
    ours = Ours(work / "ours", extra=[work])
    sid = ours.load(yaml_path.read_text())
    try:
        ours.load_weights(sid, pt, strict=True)
        note = "strict"
    except Exception as exc:  # report, do not hide: the figures are then on a non-strict load
        ours.load_weights(sid, pt, strict=False)
        note = f"non-strict ({type(exc).__name__})"
    return theirs, ours, sid, note


def hwm_reset() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux ``clear_refs`` 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def hwm_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return peak_mib()


def child(which: str, work: Path, yaml_path: Path, pt: Path, size: int) -> None:
    """One engine alone in a fresh process: its idle RSS and its peak-RSS growth over 3 inferences."""
    import upstream_side as up

    if which == "upstream":
        with up.quiet(work):
            theirs = up.load(yaml_path, pt, strict=True)

        def run() -> object:
            return up.infer(theirs, batch)
    else:
        from ours_side import Ours

        ours = Ours(work / f"ours-{which}", extra=[work])
        sid = ours.load(yaml_path.read_text())
        ours.load_weights(sid, pt, strict=True)

        def run() -> object:
            return ours.infer(sid, batch)

    batch = {k: v for k, v in up.frame_batch(1, size, size).items() if k != "mask"}
    idle = rss_mib()
    reset = hwm_reset()
    for _ in range(3):
        run()
    peak = hwm_mib()
    print(
        json.dumps(
            {
                "which": which,
                "idle_mib": round(idle),
                "peak_growth_mib": round(peak - idle),
                "upstream_imported": "cuvis_ai.node" in sys.modules,
                "hwm_reset": reset,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--child", default="")
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.work, args.work / "rx_fitted.yaml", args.work / "rx_fitted.pt", args.size)
        return
    code = "import time,resource;t=time.perf_counter();import cuvis_ai.node;" + (
        "print(time.perf_counter()-t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024)"
    )
    base = "import resource;print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024)"
    imports = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True) for _ in range(3)]
    bare = float(subprocess.run([sys.executable, "-c", base], capture_output=True, text=True).stdout)
    figures = [tuple(map(float, r.stdout.split()[-2:])) for r in imports]
    print(
        f"import cuvis_ai.node: {statistics.median(f[0] for f in figures):.2f} s "
        f"(runs {[round(f[0], 2) for f in figures]}), "
        f"peak RSS {statistics.median(f[1] for f in figures):.0f} MiB (bare interpreter {bare:.0f} MiB)"
    )
    import torch
    import upstream_side as up

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        yaml_path, pt = prepare(work)
        theirs, ours, sid, note = engines(work, yaml_path, pt)
        batch = {k: v for k, v in up.frame_batch(1, args.size, args.size).items() if k != "mask"}
        a, b = up.infer(theirs, batch), ours.infer(sid, batch)
        diff = up.max_abs_diff(a["RXGlobal.scores"], b["RXGlobal.scores"]) if "RXGlobal.scores" in b else None
        print(f"ours loaded the upstream files {note}; RXGlobal.scores max abs diff {diff}")
        t_up, t_ours = [], []
        for _ in range(2):  # warm up
            up.infer(theirs, batch)
            ours.infer(sid, batch)
        for _ in range(args.reps):
            t0 = time.perf_counter()
            up.infer(theirs, batch)
            t1 = time.perf_counter()
            ours.infer(sid, batch)
            t2 = time.perf_counter()
            t_up.append(t1 - t0)
            t_ours.append(t2 - t1)
        ratios = sorted(o / u for o, u in zip(t_ours, t_up, strict=True))
        print(
            f"RX 1x{args.size}x{args.size}x61, {args.reps} interleaved runs, torch threads "
            f"{torch.get_num_threads()}: upstream median {statistics.median(t_up) * 1e3:.1f} ms, ours "
            f"{statistics.median(t_ours) * 1e3:.1f} ms; ours/upstream median {statistics.median(ratios):.2f} "
            f"(min {ratios[0]:.2f}, max {ratios[-1]:.2f})"
        )
        ours.close()
        for which in ("upstream", "ours"):
            out = subprocess.run(
                [sys.executable, __file__, "--child", which, "--work", str(work), "--size", str(args.size)],
                capture_output=True,
                text=True,
            )
            lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
            print(lines[-1] if lines else f"{which}: child failed: {out.stderr.strip().splitlines()[-1:]}")


if __name__ == "__main__":
    main()
