#!/usr/bin/env python
"""Save a train run, restore it in a new session, and continue training from the restored weights.

    python examples/restore_and_continue.py --address 127.0.0.1:50050

Session 1: ResolveConfig + SetTrainRunConfig -> Train(STATISTICAL) -> SaveTrainRun(save_weights) -> close.
Session 2: RestoreTrainRun(trainrun, weights) -> same outputs as session 1 -> Train(GRADIENT) continues
-> SaveTrainRun again.
"""

from __future__ import annotations

import sys

import numpy as np
from _common import connected, data_overrides, parser, run_training, synthetic_frames


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[1])
    p.add_argument("--trainrun", default="channel_selector", help="a train run with gradient training")
    p.add_argument("--epochs", type=int, default=1, help="epochs to continue for")
    p.add_argument("--save-as", default="restore_example/run", help="server path stem of the saved run")
    args = p.parse_args(argv)
    overrides = [*data_overrides(args.size, frames=6), f"training.max_epochs={args.epochs}"]
    frames = synthetic_frames([5], args.size)

    with connected(args) as client:
        with client.create_session() as first:
            first.configure_trainrun(args.trainrun, overrides)
            if run_training(first, "statistical", verbose=args.verbose).status != "COMPLETE":
                return 1
            saved = first.save_trainrun(args.save_as, save_weights=True)
            before = first.infer(frames["cube"], frames["wavelengths"], output_specs=["scores"])
            print(f"session 1 saved {saved.trainrun_path} with weights {saved.weights_path}; closing it")

        restored = client.restore_trainrun(saved.trainrun_path, weights_path=saved.weights_path, strict=True)
        with restored as second:
            name = (second.trainrun or {}).get("name", "?")
            print(f"session 2 {second.id}: restored train run {name!r}")
            after = second.infer(frames["cube"], frames["wavelengths"], output_specs=["scores"])
            key = next(iter(before))
            same = np.array_equal(before[key], after[key])
            print(f"restored outputs identical to session 1: {same}")
            if not same:
                return 1
            stream = run_training(second, "gradient", verbose=args.verbose)
            if stream.status != "COMPLETE":
                return 1
            changed = not np.array_equal(after[key], second.infer(frames["cube"], frames["wavelengths"])[key])
            print(f"training continued from the restored weights; outputs changed: {changed}")
            again = second.save_trainrun(args.save_as + "_continued", save_weights=True)
            print(f"saved {again.trainrun_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
