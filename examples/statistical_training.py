#!/usr/bin/env python
"""Statistical training of the RX anomaly detector, then inference on unseen frames.

    python examples/statistical_training.py --address 127.0.0.1:50050

CreateSession -> ResolveConfig(trainrun/rx_statistical, overrides) -> SetTrainRunConfig ->
Train(STATISTICAL) -> GetTrainStatus -> GetPipelineOutputs -> Inference -> CloseSession.
"""

from __future__ import annotations

import sys

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

from cuvis_cluster.client import format_progress
from cuvis_cluster.client.pictures import frame2d


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[1])
    p.add_argument("--seed", type=int, default=123, help="training.seed override")
    args = p.parse_args(argv)
    overrides = [*data_overrides(args.size), "data.batch_size=4", f"training.seed={args.seed}"]

    with connected(args) as client, client.create_session() as session:
        config = session.configure_trainrun("rx_statistical", overrides)
        print(f"train run {config['name']}: train frames {split_ids(config['data'], 'train')}, batch size 4")
        stream = run_training(session, "statistical", verbose=args.verbose)
        status = session.train_status()
        print(f"GetTrainStatus: {format_progress(status)}")
        if stream.status != "COMPLETE" or status.status != stream.last.status:
            return 1

        outputs = session.outputs()
        print(f"pipeline outputs: {', '.join(sorted(outputs))}")
        test_ids = split_ids(config["data"], "test")
        frames = synthetic_frames(test_ids, args.size)
        result = session.infer(frames["cube"], frames["wavelengths"], output_specs=["scores", "decisions"])
        name, scores = result.scores()
        for i, frame_id in enumerate(test_ids):
            frame_scores = frame2d(scores, index=i)
            auc = roc_auc(frame_scores, anomaly_truth(frames["mask"][i]))
            low, high = frame_scores.min(), frame_scores.max()
            print(f"frame {frame_id}: {name} in [{low:.3g}, {high:.3g}], pixel ROC-AUC {auc:.3f}")
        print(f"returned only {sorted(result)} (output_specs filter)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
