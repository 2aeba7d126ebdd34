#!/usr/bin/env python
"""The complete workflow through the gateway: resolve -> statistical training -> save -> inference -> PNG.

    python examples/complete_workflow.py --address 127.0.0.1:50050 --out outputs/demo
    python examples/complete_workflow.py --local-cluster 2 --out outputs/demo     # starts its own cluster

1. ResolveConfig ``trainrun/rx_statistical`` with overrides that shrink the synthetic Lentils data;
2. SetTrainRunConfig (builds the RX pipeline) and Train(STATISTICAL);
3. SavePipeline and SaveTrainRun (with weights) under the worker's output root;
4. Inference on synthetic frames the training never saw;
5. writes the anomaly heatmap and the decisions over a false-RGB rendering as PNGs, plus the raw outputs.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from _common import (
    anomaly_truth,
    connected,
    data_overrides,
    parser,
    roc_auc,
    run_training,
    split_ids,
    synthetic_frames,
)

from cuvis_cluster.client import pictures


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[1], out="outputs/complete_workflow")
    p.add_argument("--trainrun", default="rx_statistical", help="train-run config to resolve")
    p.add_argument("--save-as", default="complete_workflow/rx", help="server path stem for the saved run")
    args = p.parse_args(argv)
    out = Path(args.out)
    started = time.monotonic()

    with connected(args) as client:
        print(f"connected to {client.address} ({client.health()})")
        with client.create_session() as session:
            print(f"session {session.id}")
            overrides = data_overrides(args.size)
            config = session.resolve_trainrun(args.trainrun, overrides)
            # canonical: the pipeline is referenced by path (the worker wrote the resolved pipeline there)
            print(f"1. resolved trainrun/{args.trainrun}: pipeline {config['pipeline']}")

            applied = session.apply_trainrun(config)
            print(f"2. applied (pipeline built from the config: {applied.pipeline_from_config}); training")
            stream = run_training(session, "statistical", verbose=args.verbose)
            if stream.status != "COMPLETE":
                print(f"training ended {stream.status}", file=sys.stderr)
                return 1

            pipeline = session.save_pipeline(args.save_as)
            run = session.save_trainrun(args.save_as + "_run", save_weights=True)
            print(f"3. saved pipeline {pipeline.pipeline_path} (+ {Path(pipeline.weights_path).name})")
            print(f"   saved train run {run.trainrun_path}")

            test_ids = split_ids(config["data"], "test") or [0]
            frames = synthetic_frames(
                test_ids[:1], args.size, seed=int(config["data"]["params"].get("seed", 0))
            )
            result = session.infer(frames["cube"], frames["wavelengths"], mask=frames["mask"])
            print(f"4. inference on test frame {test_ids[0]}: {len(result)} outputs")

    found = result.scores()
    if found is None:
        print(f"no score output among {list(result)}", file=sys.stderr)
        return 1
    scores_name, scores = found
    written = pictures.write_outputs(
        result, out, cube=frames["cube"], wavelengths=frames["wavelengths"], stem="complete_workflow"
    )
    truth = anomaly_truth(frames["mask"][0])
    auc = roc_auc(pictures.frame2d(scores), truth)
    decisions = result.decisions()
    flagged = float(np.mean(decisions[1])) * 100 if decisions is not None else float("nan")

    print("5. pictures written")
    print()
    print("summary")
    print(f"  train run        {args.trainrun} (statistical, {args.size}x{args.size} synthetic frames)")
    print(f"  server files     {pipeline.pipeline_path}, {run.weights_path}")
    print(f"  scores           {scores_name} {scores.dtype}{list(scores.shape)}")
    print(f"  anomalous pixels {truth.mean() * 100:.1f}% labelled, {flagged:.1f}% flagged")
    print(f"  pixel ROC-AUC    {auc:.3f}")
    print(f"  outputs          {written['npz']}")
    if "overlay" in written:
        print(f"  decisions PNG    {written['overlay']}")
    print(f"  elapsed          {time.monotonic() - started:.1f} s")
    print(f"anomaly map PNG: {written['heatmap']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
