"""In-process tests of the trainer building blocks: registry, profiler statistics, calibration search."""

from __future__ import annotations

import statistics
import threading
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import cuvis_cluster.engine.nodes  # noqa: F401  (registers the catalogue)
from cuvis_cluster.engine import schemas
from cuvis_cluster.engine.nodes.base import NodeRegistry
from cuvis_cluster.engine.nodes.deciders import BinaryDecider, QuantileBinaryDecider
from cuvis_cluster.engine.pipeline import Pipeline
from cuvis_cluster.engine.profiling import P2Median, Profiler
from cuvis_cluster.engine.training import registry
from cuvis_cluster.engine.training.calibration import BinarySearch, QuantileSearch, confusion
from cuvis_cluster.errors import InvalidArgument


# -- registry ---------------------------------------------------------------------------------------
def test_registry_names_are_the_config_schema_choices():
    literal = typing.get_args(schemas.OptimizerConfig.model_fields["name"].annotation)
    assert tuple(registry.OPTIMIZERS) == literal
    literal = typing.get_args(schemas.SchedulerConfig.model_fields["name"].annotation)
    assert tuple(registry.SCHEDULERS) == literal
    assert set(registry.CALLBACKS) == set(schemas.CallbacksConfig.model_fields)
    for entry in [*registry.OPTIMIZERS.values(), *registry.SCHEDULERS.values()]:
        model = schemas.OptimizerConfig if entry.name in registry.OPTIMIZERS else schemas.SchedulerConfig
        assert set(entry.fields) <= set(model.model_fields), entry.name


@pytest.mark.parametrize("name", list(registry.OPTIMIZERS))
@pytest.mark.parametrize("scheduler", [None, *registry.SCHEDULERS])
def test_every_optimizer_and_scheduler_builds_and_steps(name, scheduler):
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = registry.build_optimizer([param], schemas.OptimizerConfig(name=name, lr=0.1, momentum=0.5))
    (param**2).sum().backward()
    optimizer.step()
    assert (param < 1).all()
    if scheduler is not None:
        out = registry.build_scheduler(optimizer, schemas.SchedulerConfig(name=scheduler), 10, 4)
        assert out["interval"] == "epoch" and hasattr(out["scheduler"], "step")
        assert ("monitor" in out) == (scheduler == "reduce_on_plateau")


def test_sgd_nesterov_without_momentum_is_invalid():
    cfg = schemas.OptimizerConfig(name="sgd", nesterov=True, momentum=0.0)
    with pytest.raises(InvalidArgument, match="momentum"):
        registry.build_optimizer([torch.nn.Parameter(torch.ones(1))], cfg)


def test_callbacks_build_from_config(tmp_path):
    cfg = schemas.CallbacksConfig(
        early_stopping=[{"monitor": "val/bce"}, {"monitor": "val_loss", "patience": 1}],
        checkpoint={"monitor": "metrics_anomaly/iou", "mode": "max"},
        learning_rate_monitor={},
    )
    built = registry.build_callbacks(cfg, registry.CallbackContext(checkpoint_dir=tmp_path))
    assert [type(c).__name__ for c in built] == [
        "EarlyStopping",
        "EarlyStopping",
        "ModelCheckpoint",
        "LearningRateMonitor",
    ]
    bad = schemas.CallbacksConfig(checkpoint={"filename": "../escape"})
    with pytest.raises(InvalidArgument, match="filename"):
        registry.build_callbacks(bad, registry.CallbackContext(checkpoint_dir=tmp_path))


def test_capabilities_param_specs_follow_the_pydantic_fields():
    caps = registry.capabilities()
    names = [p.name for p in caps.optimizer_params]
    assert names == list(schemas.OptimizerConfig.model_fields)
    betas = next(p for p in caps.optimizer_params if p.name == "betas")
    assert betas.type == "list[float] | null" and betas.default_value == "null"
    assert "adam" in betas.description and "sgd" not in betas.description.split("used by:")[-1]
    name = next(p for p in caps.scheduler_params if p.name == "name")
    assert "one of: step, cosine, exponential, reduce_on_plateau" in name.validation


# -- profiler ---------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0.01, 1000.0), min_size=1, max_size=200))
def test_profiler_moments_match_numpy(values):
    profiler = Profiler()
    profiler.configure(True)
    for v in values:
        profiler.record("n", "inference", v)
    (row,) = profiler.summary()
    assert row.count == len(values)
    assert row.mean_ms == pytest.approx(float(np.mean(values)), rel=1e-9, abs=1e-9)
    assert row.total_ms == pytest.approx(float(np.sum(values)), rel=1e-9)
    assert row.min_ms == min(values) and row.max_ms == max(values) and row.last_ms == values[-1]
    expected_std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    assert row.std_ms == pytest.approx(expected_std, rel=1e-6, abs=1e-6)
    if len(values) <= 5:
        assert row.median_ms == pytest.approx(statistics.median(values))
    assert min(values) <= row.median_ms <= max(values)


@pytest.mark.parametrize("dist", ["lognormal", "uniform", "exponential"])
def test_p2_median_tracks_the_sample_median(dist):
    rng = np.random.default_rng(3)
    values = {
        "lognormal": rng.lognormal(1.0, 0.5, 20000),
        "uniform": rng.uniform(1, 9, 20000),
        "exponential": rng.exponential(2.0, 20000),
    }[dist]
    est = P2Median()
    for v in values:
        est.add(float(v))
    true = float(np.median(values))
    assert abs(est.value - true) / true < 0.03


def test_profiler_skip_reset_stage_filter_and_threads():
    profiler = Profiler()
    profiler.configure(True, skip_first_n=2)
    threads = [
        threading.Thread(target=lambda: [profiler.record("a", "inference", 1.0) for _ in range(100)])
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    profiler.record("a", "train", 5.0)
    assert {r.stage: r.count for r in profiler.summary()} == {"inference": 398}
    assert profiler.summary("train") == []
    with pytest.raises(InvalidArgument):
        profiler.configure(True, skip_first_n=-1)
    with pytest.raises(InvalidArgument):
        profiler.summary("sideways")
    profiler.configure(True, reset=True, skip_first_n=0)
    assert profiler.summary() == []
    with profiler.measure("b", "val"):
        pass
    assert profiler.summary("val")[0].count == 1
    profiler.configure(False)
    with profiler.measure("b", "val"):
        pass
    assert profiler.summary("val")[0].count == 1


# -- calibration search -----------------------------------------------------------------------------
def _scores(seed: int, shape=(3, 20, 24, 1)):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(shape, generator=g)
    targets = torch.rand(shape, generator=g) < 0.05
    return scores + 2.5 * targets, targets


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_quantile_search_counts_are_exactly_the_deciders_decisions(seed):
    scores, targets = _scores(seed)
    decider = QuantileBinaryDecider(quantile=0.9)
    search = QuantileSearch(decider, 0.9)
    search.add(scores[:2], targets[:2])  # streamed in two batches
    search.add(scores[2:], targets[2:])
    for i in (0, 37, len(search.candidates) - 1, int(torch.argmin((search.candidates - 0.9).abs()))):
        q = float(search.candidates[i])
        decider.set_thresholds(quantile=q)
        d = decider(logits=scores)["decisions"]
        tp, fp, fn = (d & targets).sum(), (d & ~targets).sum(), (~d & targets).sum()
        assert (search.tp[i], search.fp[i], search.fn[i]) == (float(tp), float(fp), float(fn)), q


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binary_search_finds_the_brute_force_f1_optimum(seed):
    logits, targets = _scores(seed)
    decider = BinaryDecider(threshold=0.5)
    search = BinarySearch(decider)
    search.add(logits, targets)
    after, before_m, after_m = search.solve(0.5)
    probs = torch.sigmoid(logits)
    best = 0.0
    for t in torch.unique(probs):
        d = probs >= t
        f1 = confusion((d & targets).sum(), (d & ~targets).sum(), (~d & targets).sum())["f1"]
        best = max(best, float(f1))
    assert after_m["f1"] == pytest.approx(best)
    decider.set_thresholds(threshold=after)
    d = decider(logits=logits)["decisions"]
    assert float(
        confusion((d & targets).sum(), (d & ~targets).sum(), (~d & targets).sum())["f1"]
    ) == pytest.approx(best)
    assert after_m["f1"] >= before_m["f1"]


def test_a_decider_fed_by_nothing_is_skipped_as_nothing_wired(tmp_path):
    from cuvis_cluster.engine.facade import Engine
    from cuvis_cluster.engine.training.calibration import run_calibration
    from cuvis_cluster.engine.training.run import TrainContext, TrainRun
    from cuvis_cluster.engine.types import EngineConfig

    config = {
        "nodes": [
            {"name": "data", "type": "HyperspectralInput"},
            {"name": "rx", "type": "RXPerBatch"},
            {"name": "wired", "type": "BinaryDecider"},
            {"name": "orphan", "type": "BinaryDecider"},
        ],
        "connections": [
            {"source": "data.cube", "target": "rx.data"},
            {"source": "rx.scores", "target": "wired.logits"},
        ],
    }
    pipeline = Pipeline.from_config(config, NodeRegistry(), extra_inputs=["logits"])
    engine = Engine(EngineConfig(configs_dir=Path("configs"), data_dir=tmp_path, output_dir=tmp_path))
    data = {
        "data_module": "lentils_synthetic",
        "batch_size": 2,
        "train_ids": [0],
        "val_ids": [1, 2],
        "params": {"height": 16, "width": 16, "num_frames": 3},
    }
    ctx = TrainContext("calibration", None, pipeline, data, None, None, torch.device("cpu"), engine)
    run = TrainRun(run_calibration, ctx).start()
    events = run.events(timeout=60)
    outcome = events[-1].calibration
    assert events[-1].status == "complete" and outcome.applicable, outcome.phase_detail
    by_name = {d.name: d for d in outcome.deciders}
    assert by_name["wired"].status == "calibrated"
    assert by_name["orphan"].status == "skipped" and by_name["orphan"].skip == "nothing_wired"
    assert "not connected" in by_name["orphan"].skip_detail
