"""Epoch time of the streaming gradient trainer vs a bare Lightning fit of the same module.

Not a test: prints figures. One process, interleaved repetitions, medians.

    .venv/bin/python bench/trainer_bench.py [--reps 5] [--epochs 3] [--size 96] [--frames 8]
        [--pipeline channel_selector|deep_svdd] [--threads N] [--device auto|cpu|cuda]

* ``streaming``  ``Engine.train(session, "gradient")`` as the worker runs it: the plan checks, the
                 background thread, the ProgressCallback turning every batch into a ProgressEvent (with a
                 host sync of the losses), the in-memory logger, the queue to the consumer;
* ``bare``       ``pl.Trainer(...).fit(PipelineModule(...))`` on a copy of the same statistically fitted
                 pipeline, with the same loaders, optimizer, unfrozen nodes and Trainer flags, and no
                 callbacks or logger.

Both fits run in a non-main thread (``--bare-main-thread`` runs the bare one in the main thread), so
they share the same threading conditions. Epoch time is (fit end - fit start) / epochs, taken at the same
two Lightning hooks for both: the streaming run at the consumer's receipt of the ``fit_start``/``fit_end``
events, the bare run by a two-line timing callback. Setup and the post-fit evaluation are outside that
window for both. Both wall-clock and process CPU time are reported (CPU time is robust against other
load on a shared machine), as medians and best-of over the repetitions.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import threading
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]


def now() -> tuple[float, float]:
    """(wall clock, CPU time of the whole process) in seconds."""
    return time.perf_counter(), time.process_time()


class FitClock(pl.Callback):
    def on_fit_start(self, trainer, pl_module):
        self.start = now()

    def on_fit_end(self, trainer, pl_module):
        self.end = now()


def per_epoch(start: tuple[float, float], end: tuple[float, float], epochs: int) -> tuple[float, float]:
    return (end[0] - start[0]) / epochs, (end[1] - start[1]) / epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--size", type=int, default=96, help="frame height and width")
    parser.add_argument("--frames", type=int, default=8, help="train frames (val gets half as many)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--pipeline", default="channel_selector", choices=["channel_selector", "deep_svdd"])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument(
        "--bare-main-thread",
        action="store_true",
        help="run the bare fit in the main thread instead of a worker thread",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from cuvis_cluster.engine import schemas
    from cuvis_cluster.engine.facade import Engine, EngineConfig
    from cuvis_cluster.engine.training.gradient import TrainableState, make_plan, trainer_kwargs
    from cuvis_cluster.engine.training.lightning_module import PipelineModule
    from cuvis_cluster.engine.training.run import TrainContext

    out = Path(tempfile.mkdtemp(prefix="trainer-bench-"))
    engine = Engine(
        EngineConfig(configs_dir=REPO / "configs", data_dir=out, output_dir=out, device=args.device)
    )
    n_val = max(1, args.frames // 2)
    overrides = [
        f"data.params.height={args.size}",
        f"data.params.width={args.size}",
        f"data.params.num_frames={args.frames + n_val}",
        f"data.train_ids=[{','.join(map(str, range(args.frames)))}]",
        f"data.val_ids=[{','.join(map(str, range(args.frames, args.frames + n_val)))}]",
        "data.test_ids=[]",
        f"data.batch_size={args.batch_size}",
        f"training.trainer.max_epochs={args.epochs}",
        "training.callbacks.early_stopping=[]",
        "training.callbacks.checkpoint=null",
        "training.callbacks.learning_rate_monitor=null",
        "training.scheduler=null",
    ]
    if args.pipeline == "channel_selector":
        overrides.append("unfreeze_nodes=[channel_selector,logit]")
    session_id = engine.create_session()
    trainrun = engine.resolve_config(session_id, "trainrun", f"trainrun/{args.pipeline}", overrides)
    engine.set_trainrun(session_id, trainrun)
    statistical = engine.train(session_id, "statistical")
    assert list(statistical)[-1].status == "complete", statistical.error
    session = engine.session(session_id)
    fitted = copy.deepcopy(session.pipeline)  # the bare runs start from the same fitted state

    def streaming() -> tuple[float, float]:
        run = engine.train(session_id, "gradient")
        start = end = None
        for event in run:
            if event.hook == "fit_start":
                start = now()
            elif event.hook == "fit_end":
                end = now()
        if run.error is not None:
            raise RuntimeError(f"streaming run failed: {run.error}")
        assert start is not None and end is not None
        return per_epoch(start, end, args.epochs)

    def bare() -> tuple[float, float]:
        pipeline = copy.deepcopy(fitted)
        ctx = TrainContext(
            "gradient",
            session,
            pipeline,
            trainrun["data"],
            trainrun["training"],
            trainrun,
            engine.device,
            engine,
        )
        plan = make_plan(ctx)
        dm = engine.build_datamodule(trainrun["data"])
        train_loader, val_loader = dm.dataloader("train"), dm.dataloader("val")
        TrainableState(pipeline, plan.freeze_nodes, plan.unfreeze_nodes).apply()
        pl.seed_everything(plan.training.seed, workers=True, verbose=False)
        module = PipelineModule(
            pipeline, plan.loss_nodes, plan.metric_nodes, plan.training, len(train_loader)
        )
        clock = FitClock()
        kwargs = trainer_kwargs(plan.training, pipeline.device)
        trainer = pl.Trainer(
            **kwargs, logger=False, callbacks=[clock], enable_checkpointing=False, default_root_dir=str(out)
        )
        pipeline.train()
        fit = lambda: trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader)  # noqa: E731
        if args.bare_main_thread:
            fit()
        else:  # the same kind of thread the streaming trainer runs in
            thread = threading.Thread(target=fit, name="bare-fit")
            thread.start()
            thread.join()
        return per_epoch(clock.start, clock.end, args.epochs)

    assert isinstance(schemas.TrainingConfig.model_validate(trainrun["training"]), schemas.TrainingConfig)
    print(
        f"{args.pipeline}: {args.frames} train + {n_val} val frames of {args.size}x{args.size}x61, "
        f"batch {args.batch_size}, {args.epochs} epochs per fit, device {engine.device}, {args.reps} reps"
    )
    bare()
    streaming()  # warm-up of both paths (allocator, kernels, imports)
    wall = {"bare": [], "streaming": []}
    cpu = {"bare": [], "streaming": []}
    for rep in range(args.reps):
        order = (bare, streaming) if rep % 2 == 0 else (streaming, bare)
        for fn in order:
            w, c = fn()
            wall[fn.__name__].append(w)
            cpu[fn.__name__].append(c)
        wb, ws, cb, cs = (t[k][-1] * 1000 for t in (wall, cpu) for k in ("bare", "streaming"))
        print(
            f"  rep {rep + 1:2d}: wall bare {wb:7.1f} streaming {ws:7.1f} ms/epoch ({ws / wb:.3f})   "
            f"cpu bare {cb:7.1f} streaming {cs:7.1f} ms/epoch ({cs / cb:.3f})"
        )
    for label, table in (("wall-clock", wall), ("process CPU", cpu)):
        mb, ms = (statistics.median(table[k]) * 1000 for k in ("bare", "streaming"))
        bb, bs = (min(table[k]) * 1000 for k in ("bare", "streaming"))
        print(
            f"{label:12s} epoch time: median bare {mb:.1f} ms, streaming {ms:.1f} ms -> {ms / mb:.3f};  "
            f"best-of bare {bb:.1f} ms, streaming {bs:.1f} ms -> {bs / bb:.3f}"
        )
    print("goal: streaming / bare <= 1.10")
    print("config:", yaml.safe_dump(trainrun["training"]["trainer"], default_flow_style=True).strip())
    engine.shutdown()


if __name__ == "__main__":
    main()
