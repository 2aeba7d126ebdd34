"""Shared plumbing of the examples: arguments, connecting (or starting a local cluster), synthetic frames.

Every example takes the same connection flags as ``cuvis-ai`` (``--address``, TLS, ``--token``; each also
read from ``CUVIS_*`` environment variables; the address defaults to ``$CUVIS_ADDRESS`` or
``127.0.0.1:50050``), plus:

* ``--local-cluster N``: start redis, N workers and a gateway on loopback for this run, and stop them after;
* ``--size S``: height and width of the synthetic frames (small is fast);
* ``--out DIR``: where an example writes local files (pictures, outputs);
* ``--verbose``: print every training progress message.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from cuvis_cluster.client import Client, Session, TrainStream, format_progress
from cuvis_cluster.client.settings import ClientSettings

WAVELENGTHS_NM = np.arange(430, 911, 8, dtype=np.int32)  # 61 bands, as the synthetic Lentils data
ANOMALY_CLASS_IDS = (2, 3)  # brown lentils and stones; background (0) and black lentils (1) are normal


def parser(description: str, *, out: str = "outputs/examples") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    ClientSettings.add_arguments(p)
    p.add_argument(
        "--local-cluster",
        type=int,
        metavar="N",
        default=0,
        help="start a local cluster (redis-server, N workers, a gateway) for this run and use it",
    )
    p.add_argument("--size", type=int, default=32, help="height and width of the synthetic frames")
    p.add_argument("--verbose", "-v", action="store_true", help="print every progress message")
    p.add_argument("--out", default=out, help="local directory for the files the example writes")
    return p


def data_overrides(size: int, frames: int = 8) -> list[str]:
    """Overrides that shrink the synthetic Lentils data so a CPU trains in seconds."""
    n_train = max(2, frames // 2)
    ids = list(range(frames))
    as_list = lambda xs: "[" + ",".join(str(x) for x in xs) + "]"  # noqa: E731
    return [
        f"data.params.height={size}",
        f"data.params.width={size}",
        f"data.params.num_frames={frames}",
        f"data.train_ids={as_list(ids[:n_train])}",
        f"data.val_ids={as_list(ids[n_train : n_train + (frames - n_train) // 2])}",
        f"data.test_ids={as_list(ids[n_train + (frames - n_train) // 2 :])}",
    ]


def split_ids(data_config: dict, stage: str) -> list[int]:
    """The frame ids of a split in a resolved (canonical) data config: its ``dir_indices`` selectors."""
    splits = data_config.get("splits") or {}
    return [int(i) for sel in splits.get(stage) or [] if sel.get("kind") == "dir_indices" for i in sel["ids"]]


def _local_cluster_class():
    try:
        from cuvis_cluster.localcluster.supervisor import LocalCluster
    except ImportError as exc:
        sys.exit(f"--local-cluster needs cuvis_cluster.localcluster ({exc}); run `cuvis-cluster up` instead")
    return LocalCluster


@contextlib.contextmanager
def local_cluster(workers: int, workdir: Path) -> Iterator[str]:
    """Redis, ``workers`` workers and a gateway for the duration of the block; yields the gateway address.

    Logs and the workers' server-side files stay under ``workdir``. The workers share one output
    directory, as they share a volume in a real deployment, so a run saved by one worker can be
    restored by another.
    """
    cls = _local_cluster_class()
    workdir.mkdir(parents=True, exist_ok=True)
    shared = (workdir / "outputs").resolve()
    print(f"starting a local cluster with {workers} worker(s); logs under {workdir}")
    with cls(workers=workers, workdir=workdir, worker_args=["--output-dir", str(shared)]) as cluster:
        print(f"local cluster: gateway {cluster.address}")
        yield cluster.address


@contextlib.contextmanager
def connected(args: argparse.Namespace) -> Iterator[Client]:
    """The client the example uses: to ``--address``, or to a local cluster it starts."""
    settings = ClientSettings.from_namespace(args)
    with contextlib.ExitStack() as stack:
        if args.local_cluster:
            address = stack.enter_context(local_cluster(args.local_cluster, Path(args.out) / "cluster"))
            settings = settings.model_copy(update={"address": address})
        client = stack.enter_context(settings.connect())
        client.wait_until_ready(settings.connect_timeout)
        yield client


def run_training(session: Session, trainer: str, *, verbose: bool = False, **kwargs) -> TrainStream:
    """Train to the end; a tqdm bar on terminals, otherwise quiet unless ``verbose``; prints the result."""
    stream = session.train(trainer, **kwargs)
    for resp in stream:
        if verbose and not sys.stderr.isatty():  # on a terminal the SDK draws a progress bar instead
            print(f"  [{trainer}] {format_progress(resp)}")
    if stream.last is not None:
        print(f"  [{trainer}] {format_progress(stream.last)}")
    return stream


def synthetic_frames(frame_ids: Sequence[int], size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Frames of the synthetic Lentils data as the workers generate them (same seed and ids = same pixels).

    Uses the engine's generator when it is installed next to the client; otherwise draws a simpler scene
    with the same layout (61 bands, uint16 counts, class-id mask with anomalies of class 2 and 3).
    """
    try:
        from cuvis_cluster.engine.data.synthetic import generate_frame
    except ImportError:
        frames = [_simple_frame(i, size, seed) for i in frame_ids]
    else:
        frames = [generate_frame(i, height=size, width=size, seed=seed) for i in frame_ids]
    return {
        "cube": np.stack([f["cube"] for f in frames]),
        "wavelengths": np.asarray(frames[0]["wavelengths"]),
        "mask": np.stack([f["mask"] for f in frames]),
    }


def _simple_frame(frame_id: int, size: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([seed, frame_id])
    t = (WAVELENGTHS_NM - 430) / 480.0
    cube = np.tile(3400 + 400 * t, (size, size, 1)) + rng.normal(0, 60, (size, size, 61))
    mask = np.zeros((size, size), np.int32)
    yy, xx = np.mgrid[:size, :size]
    for k in range(max(3, size // 6)):
        cy, cx, r = rng.uniform(0, size), rng.uniform(0, size), max(1.5, size / 16)
        blob = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        cls = 3 if k == 0 else 1
        cube[blob] = (
            (1500 + 2500 * t) if cls == 3 else (600 + 1800 / (1 + np.exp(-(WAVELENGTHS_NM - 720) / 25)))
        )
        mask[blob] = cls
    return {"cube": np.clip(cube, 0, 65535).astype(np.uint16), "wavelengths": WAVELENGTHS_NM, "mask": mask}


def anomaly_truth(mask: np.ndarray) -> np.ndarray:
    return np.isin(mask, ANOMALY_CLASS_IDS)


def roc_auc(scores: np.ndarray, truth: np.ndarray) -> float:
    """Pixel ROC-AUC (Mann-Whitney U with tied ranks); NaN when only one class is present."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(truth, dtype=bool).ravel()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty_like(s)
    sorted_s = s[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
