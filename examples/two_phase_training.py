#!/usr/bin/env python
"""Two-phase training: statistical initialisation, then gradient training with Lightning.

    python examples/two_phase_training.py --address 127.0.0.1:50050 --epochs 2

The channel_selector train run first fits the normaliser, the band selector's initial weights, RX and
the logit statistically, then trains the selector, RX and the logit on BCE plus the selector's
regularisers. Losses and validation metrics stream back while it runs.
"""

from __future__ import annotations

import sys

from _common import connected, data_overrides, parser, run_training

from cuvis_cluster.client import format_progress, pb


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[1])
    p.add_argument("--trainrun", default="channel_selector", help="train run with loss nodes")
    p.add_argument("--epochs", type=int, default=2, help="training.max_epochs")
    p.add_argument("--lr", type=float, default=0.005, help="training.optimizer.lr")
    args = p.parse_args(argv)
    overrides = [
        *data_overrides(args.size, frames=6),
        f"training.max_epochs={args.epochs}",
        f"training.optimizer.lr={args.lr}",
    ]

    with connected(args) as client, client.create_session() as session:
        config = session.configure_trainrun(args.trainrun, overrides)
        print(f"train run {config['name']}: loss nodes {config['loss_nodes']}, {args.epochs} epoch(s)")

        print("phase 1: statistical initialisation")
        if run_training(session, "statistical", verbose=args.verbose).status != "COMPLETE":
            return 1

        print("phase 2: gradient training")
        losses: list[float] = []
        val_metrics: dict[str, float] = {}
        stream = session.train("gradient")
        for resp in stream:
            if resp.context.stage == pb.EXECUTION_STAGE_TRAIN and "total" in resp.losses:
                losses.append(resp.losses["total"])
            if resp.context.stage == pb.EXECUTION_STAGE_VAL and resp.metrics:
                val_metrics.update(resp.metrics)
            if args.verbose or resp.event.hook == pb.TRAIN_HOOK_EPOCH_END:
                print(f"  {format_progress(resp)}")
        print(f"  [gradient] {stream.status} after {stream.messages} messages")
        if stream.status != "COMPLETE" or not losses:
            return 1
        print(f"train loss: first {losses[0]:.4f}, last {losses[-1]:.4f} ({len(losses)} batches)")
        if val_metrics:
            shown = ", ".join(f"{k}={v:.3g}" for k, v in sorted(val_metrics.items())[:6])
            print(f"validation metrics: {shown}")
        saved = session.save_pipeline(f"two_phase/{config['name']}")
        print(f"saved {saved.pipeline_path} and {saved.weights_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
