#!/usr/bin/env python
"""Early stopping on the client: watch the validation loss and break out of the Train stream.

    python examples/early_stopping.py --address 127.0.0.1:50050 --patience 1

Breaking out of the loop cancels the call; the worker stops the run within one batch, GetTrainStatus
then reports CANCELLED, and the session takes new calls at once (here: an inference). The SDK's
``early_stop=`` callback does the same without a loop of your own.
"""

from __future__ import annotations

import sys
import time

from _common import connected, data_overrides, parser, synthetic_frames

from cuvis_cluster.client import format_progress, pb


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[1])
    p.add_argument("--trainrun", default="channel_selector", help="train run with gradient training")
    p.add_argument("--patience", type=int, default=1, help="epochs without a better val_loss before stopping")
    p.add_argument("--max-epochs", type=int, default=3, help="stop here at the latest (client side)")
    args = p.parse_args(argv)
    overrides = [
        *data_overrides(args.size, frames=6),
        "training.max_epochs=1000",
        "training.optimizer.lr=0.05",
    ]

    with connected(args) as client, client.create_session() as session:
        session.configure_trainrun(args.trainrun, overrides)
        session.train("statistical", progress=False).wait()
        print(f"gradient training for up to 1000 epochs; stopping when val_loss stalls for {args.patience}")
        best, stale, epochs, reason = float("inf"), 0, 0, ""
        stream = session.train("gradient")
        for resp in stream:
            if args.verbose:
                print(f"  {format_progress(resp)}")
            if resp.event.hook != pb.TRAIN_HOOK_EPOCH_END:
                continue
            epochs += 1
            val = resp.losses.get("val_loss", resp.metrics.get("val_loss", float("nan")))
            print(f"  epoch {epochs}: val_loss {val:.4f}")
            if val < best:
                best, stale = val, 0
            else:
                stale += 1
            if stale >= args.patience:
                reason = f"val_loss did not improve for {stale} epoch(s)"
                break
            if epochs >= args.max_epochs:
                reason = f"reached the client's limit of {args.max_epochs} epochs"
                break
        stream.cancel()  # breaking out already cancels once the stream is dropped; this does it right now
        print(f"stopped after {epochs} epoch(s): {reason or 'stream ended'}")

        status = session.train_status()
        deadline = time.monotonic() + 10
        while status.status == pb.TRAIN_STATUS_RUNNING and time.monotonic() < deadline:
            time.sleep(0.1)
            status = session.train_status()
        print(f"GetTrainStatus: {format_progress(status)}")
        if status.status != pb.TRAIN_STATUS_CANCELLED:
            return 1
        frames = synthetic_frames([5], args.size)
        result = session.infer(frames["cube"], frames["wavelengths"], output_specs=["scores"])
        name, scores = result.scores()
        print(f"the session is usable again: {name} {list(scores.shape)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
