"""Lightning ``.ckpt`` files as weights (issue 11): ours and upstream's load, and training continues.

Everything goes through the Engine facade, as the worker calls it:

* a checkpoint our gradient trainer wrote loads through RestoreTrainRun(weights_path=...) and
  LoadPipelineWeights with ``strict=True``, and the next Train(GRADIENT) resumes it: the epoch counter
  and the global step go on from the checkpoint, the loss starts at the checkpointed level;
* a checkpoint that upstream's own ``GradientTrainer`` wrote (trained here, in-process, on small data)
  loads with ``strict=True`` and Inference equals upstream's in-process outputs for the same input;
* corrupted files, files that are no checkpoint of this pipeline, and checkpoints that pickle objects
  are refused with INVALID_ARGUMENT naming the field, and nothing in them runs.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.cuvis import SMALL_DATA
from helpers.engines import bundled_engine
from hypothesis import given, settings
from hypothesis import strategies as st

from cuvis_cluster.engine import checkpoints
from cuvis_cluster.engine.facade import Engine
from cuvis_cluster.errors import InvalidArgument

SMALL = [
    *SMALL_DATA,
    "training.trainer.max_epochs=2",
    "training.optimizer.lr=0.01",
    "unfreeze_nodes=[channel_selector,logit]",
]


@pytest.fixture
def engine(tmp_path) -> Any:
    with bundled_engine(tmp_path) as eng:
        yield eng


def _run(engine: Engine, session: str, kind: str, **kwargs: Any) -> list:
    run = engine.train(session, kind, **kwargs)
    events = run.events(timeout=300)
    if events[-1].status != "complete":
        raise run.error if run.error is not None else AssertionError(events[-1].message)
    return events


def _epochs(training: dict[str, Any], max_epochs: int) -> dict[str, Any]:
    """``training`` with another max_epochs (in whichever form the resolved config spells it)."""
    if isinstance(training.get("trainer"), dict):
        return {**training, "trainer": {**training["trainer"], "max_epochs": max_epochs}}
    return {**training, "max_epochs": max_epochs}


def _epoch_losses(events: list) -> dict[int, float]:
    return {e.epoch: e.losses["train_loss"] for e in events if e.hook == "epoch_end"}


def _weights(engine: Engine, session: str) -> dict[str, dict[str, torch.Tensor]]:
    """What SavePipeline would write as the session's weights (per node)."""
    return engine.session(session).pipeline.weights_payload()["state_dict"]


def _assert_same_weights(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for node, state in want.items():
        assert got[node].keys() == state.keys(), node
        for key, value in state.items():
            torch.testing.assert_close(got[node][key], value, rtol=0, atol=0, msg=f"{node}.{key}")


@pytest.fixture
def ours(engine) -> dict[str, Any]:
    """Two epochs of the shipped channel-selector run, writing ``last.ckpt``; its trainrun saved."""
    session = engine.create_session()
    trainrun = engine.resolve_config(session, "trainrun", "trainrun/channel_selector", SMALL)
    trainrun["training"]["callbacks"]["checkpoint"] = {"save_last": True, "dirpath": "ck"}
    engine.set_trainrun(session, trainrun)
    _run(engine, session, "statistical")
    events = _run(engine, session, "gradient")
    ckpt = engine.output_dir / "ck" / "last.ckpt"
    assert ckpt.is_file()
    saved = engine.save_trainrun(session, "runs/cs.yaml")
    return {
        "session": session,
        "ckpt": ckpt,
        "trainrun": trainrun,
        "saved": saved,
        "losses": _epoch_losses(events),
        "weights": _weights(engine, session),
    }


# -------------------------------------------------------------------------------------------------
# our checkpoints
# -------------------------------------------------------------------------------------------------
def test_our_checkpoint_restores_and_training_resumes_from_it(engine, ours):
    losses = ours["losses"]
    assert sorted(losses) == [0, 1] and losses[1] < losses[0]

    restored = engine.restore_trainrun(ours["saved"].trainrun_path, weights_path=str(ours["ckpt"]))
    session = restored.session_id
    _assert_same_weights(_weights(engine, session), ours["weights"])  # the checkpoint's weights, exactly

    events = _run(engine, session, "gradient", training=_epochs(ours["trainrun"]["training"], 4))
    start = next(e for e in events if e.hook == "fit_start")
    assert "resumed from epoch 2" in start.message and "last.ckpt" in start.message
    assert start.epochs == (2, 4)
    resumed = _epoch_losses(events)
    assert sorted(resumed) == [2, 3]  # the epoch counter goes on: no epochs 0 and 1 again
    first_batch = next(e for e in events if e.hook == "train_progress")
    assert first_batch.global_step >= 4  # 2 epochs x 2 batches were done in the checkpoint
    # the loss goes on from the checkpointed level (not from the statistically initialised start)
    assert resumed[2] < losses[0]
    assert abs(resumed[2] - losses[1]) < abs(resumed[2] - losses[0])


def test_load_pipeline_weights_from_our_checkpoint_then_train_resumes(engine, ours):
    session = engine.create_session()
    engine.set_trainrun(session, ours["trainrun"])
    engine.load_weights(session, str(ours["ckpt"]), None, strict=True)
    _assert_same_weights(_weights(engine, session), ours["weights"])

    too_few = _epochs(ours["trainrun"]["training"], 2)
    with pytest.raises(InvalidArgument) as err:  # max_epochs counts the resumed epochs too
        _run(engine, session, "gradient", training=too_few)
    assert err.value.field == "training.trainer.max_epochs" and "finished 2 epoch" in str(err.value)

    more = _epochs(ours["trainrun"]["training"], 3)
    events = _run(engine, session, "gradient", training=more)
    assert sorted(_epoch_losses(events)) == [2]
    # the weights moved on: a further run starts its own optimizer state from epoch 0
    events = _run(engine, session, "gradient", training=more)
    assert sorted(_epoch_losses(events)) == [0, 1, 2]
    assert next(e for e in events if e.hook == "fit_start").message == "Gradient training"


def test_checkpoint_of_another_training_setup_loads_weights_but_does_not_resume(engine, ours):
    session = engine.create_session()
    engine.set_trainrun(session, ours["trainrun"])
    engine.load_weights(session, None, ours["ckpt"].read_bytes(), strict=True)
    training = ours["trainrun"]["training"]
    other = {**training, "optimizer": {**training["optimizer"], "name": "sgd"}}
    events = _run(engine, session, "gradient", training=other)
    start = next(e for e in events if e.hook == "fit_start")
    assert "not resumed" in start.message and "optimizer 'adamw'" in start.message
    assert sorted(_epoch_losses(events)) == [0, 1]


# -------------------------------------------------------------------------------------------------
# upstream's checkpoints
# -------------------------------------------------------------------------------------------------
CHANNELS = 61  # the synthetic lentils data's band count, so the session can train on it


def _upstream_config() -> dict[str, Any]:
    def node(name: str, cls: str, **hparams: Any) -> dict[str, Any]:
        return {"name": name, "class_name": f"cuvis_ai.node.{cls}", "hparams": hparams}

    return {
        "metadata": {"name": "ckpt_roundtrip"},
        "plugins": ["cuvis_ai_builtin"],
        "nodes": [
            node("data", "data.AnomalyDataNode", normal_class_ids=[0]),
            node("norm", "normalization.MinMaxNormalizer", eps=1e-6, use_running_stats=True),
            node(
                "sel",
                "channel_selector.SoftChannelSelector",
                n_select=3,
                input_channels=CHANNELS,
                init_method="variance",
                temperature_init=5.0,
                temperature_min=0.1,
                temperature_decay=0.9,
                hard=False,
                eps=1e-6,
            ),
            node("rx", "anomaly.rx_detector.RXGlobal", eps=1e-6, num_channels=CHANNELS, cache_inverse=True),
            node("logit", "conversion.ScoreToLogit", init_scale=1.0, init_bias=0.0),
            node("bce", "losses.AnomalyBCEWithLogits", weight=1.0),
            node("decider", "deciders.binary_decider.BinaryDecider", threshold=0.5),
        ],
        "connections": [
            {"source": f"{a}.outputs.{p}", "target": f"{b}.inputs.{q}"}
            for a, p, b, q in [
                ("data", "cube", "norm", "data"),
                ("data", "mask", "bce", "targets"),
                ("norm", "normalized", "sel", "data"),
                ("sel", "selected", "rx", "data"),
                ("rx", "scores", "logit", "scores"),
                ("logit", "logits", "bce", "predictions"),
                ("logit", "logits", "decider", "logits"),
            ]
        ],
    }


def _upstream_batch(ids: list[int]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    cubes = torch.rand(6, 8, 8, CHANNELS, generator=g)
    masks = (torch.rand(6, 8, 8, generator=g) > 0.9).to(torch.int32)
    cubes[masks.bool()] += 0.5
    wavelengths = torch.linspace(450, 850, CHANNELS).to(torch.int32)
    return {"cube": cubes[ids], "mask": masks[ids], "wavelengths": wavelengths.expand(len(ids), CHANNELS)}


def _train_upstream(root: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """Upstream's own statistical + gradient training, in-process; (its last.ckpt, its inference outputs)."""
    import pytorch_lightning as upl
    from cuvis_ai_core.pipeline.factory import PipelineBuilder
    from cuvis_ai_core.training.trainers import GradientTrainer, StatisticalTrainer
    from cuvis_ai_schemas.enums import ExecutionStage
    from cuvis_ai_schemas.training import TrainingConfig
    from torch.utils.data import DataLoader, Dataset

    class Frames(Dataset):
        def __init__(self, ids: list[int]) -> None:
            self.ids = ids

        def __len__(self) -> int:
            return len(self.ids)

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {k: v[0] for k, v in _upstream_batch([self.ids[i]]).items()}

    class Data(upl.LightningDataModule):
        def train_dataloader(self) -> DataLoader:
            return DataLoader(Frames([0, 1, 2, 3]), batch_size=2)

        def val_dataloader(self) -> DataLoader:
            return DataLoader(Frames([4, 5]), batch_size=2)

    pipeline = PipelineBuilder().build_from_config(_upstream_config())
    data = Data()
    StatisticalTrainer(pipeline, data).fit()
    nodes = {n.name: n for n in pipeline.nodes}
    for name in ("sel", "logit"):
        nodes[name].unfreeze()
    config = TrainingConfig.model_validate(
        {
            "seed": 0,
            "max_epochs": 2,
            "accelerator": "cpu",
            "devices": 1,
            "enable_progress_bar": False,
            "num_sanity_val_steps": 0,
            "default_root_dir": str(root),
            "optimizer": {"name": "adam", "lr": 0.01},
            "callbacks": {"checkpoint": {"dirpath": str(root / "ck"), "save_last": True}},
        }
    )
    GradientTrainer(pipeline, data, loss_nodes=[nodes["bce"]], training_config=config).fit()
    batch = _upstream_batch([4, 5])
    del batch["mask"]
    with torch.no_grad():
        out = pipeline.forward(batch=batch, stage=ExecutionStage.INFERENCE)
    tensors = {f"{n}.{p}": v for (n, p), v in out.items() if isinstance(v, torch.Tensor)}
    return root / "ck" / "last.ckpt", tensors


def test_upstream_checkpoint_loads_strict_and_matches_upstream_inference(engine, tmp_path):
    ckpt, expected = _train_upstream(tmp_path / "upstream")
    payload = torch.load(ckpt, map_location="cpu", weights_only=True)  # upstream's file, as written
    assert checkpoints.is_checkpoint(payload) and checkpoints.layout(payload) == "upstream"

    session = engine.create_session()
    engine.load_pipeline(session, _upstream_config())
    engine.load_weights(session, None, ckpt.read_bytes(), strict=True)
    batch = _upstream_batch([4, 5])
    del batch["mask"]
    got = engine.infer(session, batch).tensors
    compared = ["norm.normalized", "sel.weights", "sel.selected", "rx.scores", "logit.logits"]
    for key in [*compared, "decider.decisions"]:
        # tolerance: the same float32 maths in the same order; measured 0.0
        torch.testing.assert_close(got[key].float(), expected[key].float(), rtol=0, atol=1e-6, msg=key)
    trained = payload["state_dict"]["pipeline_modules.2.channel_logits"]
    assert not torch.equal(trained, torch.zeros_like(trained))

    # training goes on from upstream's weights; its optimizer state follows upstream's parameter order,
    # so the run says it starts a fresh optimizer (and epoch counter) instead of resuming them
    engine.set_trainrun(
        session,
        {
            "name": "from_upstream",
            "data": {
                "data_module": "lentils_synthetic",
                "batch_size": 2,
                "train_ids": [0, 1],
                "val_ids": [2],
                "params": {"height": 16, "width": 16, "num_frames": 3},
            },
            "training": {"seed": 0, "max_epochs": 1, "optimizer": {"name": "adam", "lr": 0.01}},
            "loss_nodes": ["bce"],
            "unfreeze_nodes": ["sel", "logit"],
        },
    )
    events = _run(engine, session, "gradient")
    start = next(e for e in events if e.hook == "fit_start").message
    assert "from the weights of cuvis-ai checkpoint" in start and "not resumed" in start
    assert sorted(_epoch_losses(events)) == [0]


# -------------------------------------------------------------------------------------------------
# files that are refused
# -------------------------------------------------------------------------------------------------
def test_corrupted_or_foreign_files_are_invalid_argument_naming_the_field(engine, ours):
    out = engine.output_dir
    broken = out / "broken.ckpt"
    broken.write_bytes(ours["ckpt"].read_bytes()[:2000])  # a truncated checkpoint
    with pytest.raises(InvalidArgument) as err:
        engine.restore_trainrun(ours["saved"].trainrun_path, weights_path=str(broken))
    assert err.value.field == "weights_path"
    with pytest.raises(InvalidArgument) as err:
        engine.load_weights(ours["session"], str(broken), None, strict=True)
    assert err.value.field == "weights_path"

    # a Lightning checkpoint of some other model: its keys belong to no node
    payload = torch.load(ours["ckpt"], map_location="cpu", weights_only=True)
    payload["state_dict"] = {"model.encoder.weight": torch.zeros(3)}
    payload.pop(checkpoints.OURS_ENTRY)
    foreign = out / "foreign.ckpt"
    torch.save(payload, foreign)
    with pytest.raises(InvalidArgument, match="not a checkpoint of a pipeline") as err:
        engine.load_weights(ours["session"], str(foreign), None, strict=True)
    assert err.value.field.startswith("weights")

    # an upstream-layout checkpoint with more modules than this pipeline has nodes
    payload["state_dict"] = {"pipeline_modules.99.mu": torch.zeros(3)}
    torch.save(payload, foreign)
    with pytest.raises(InvalidArgument, match="belong to no node") as err:
        engine.load_weights(ours["session"], str(foreign), None, strict=True)


class _Payload:
    """Pickles as a call of os.system: what weights_only=True exists to refuse."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_with_pickled_objects_is_refused_and_runs_nothing(engine, ours, tmp_path):
    marker = tmp_path / "executed"
    payload = torch.load(ours["ckpt"], map_location="cpu", weights_only=True)
    payload["hyper_parameters"] = {"evil": _Payload(marker)}
    buf = io.BytesIO()
    torch.save(payload, buf)
    evil = engine.output_dir / "evil.ckpt"
    evil.write_bytes(buf.getvalue())
    with pytest.raises(InvalidArgument) as err:
        engine.load_weights(ours["session"], str(evil), None, strict=True)
    assert err.value.field == "weights_path" and "weights_only" in str(err.value)
    with pytest.raises(InvalidArgument) as err:
        engine.restore_trainrun(ours["saved"].trainrun_path, weights_path=str(evil))
    assert err.value.field == "weights_path"
    assert not marker.exists()


# -------------------------------------------------------------------------------------------------
# the reader itself
# -------------------------------------------------------------------------------------------------
def test_node_states_reads_both_layouts_with_an_entry_for_every_node():
    names = ["data", "rx", "rx.extra", "decider"]
    ours_payload = {
        "pytorch-lightning_version": "2.6.6",
        "state_dict": {
            "pipeline.nodes.rx.mu": torch.ones(2),
            "pipeline.nodes.rx.extra.scale": torch.zeros(()),
        },
    }
    states = checkpoints.node_states(ours_payload, names)
    assert set(states) == set(names) and states["data"] == {} and states["decider"] == {}
    assert set(states["rx"]) == {"mu"} and set(states["rx.extra"]) == {"scale"}

    upstream = {"pytorch-lightning_version": "2.6.6", "state_dict": {"pipeline_modules.1.mu": torch.ones(2)}}
    assert checkpoints.node_states(upstream, names)["rx"]["mu"].shape == (2,)
    weights = {"state_dict": {"rx": {"mu": torch.ones(2)}}, "metadata": {}}
    assert not checkpoints.is_checkpoint(weights) and checkpoints.source_of(weights) is None
    source = checkpoints.source_of({**upstream, "epoch": 7, "global_step": 70}, "x.ckpt")
    assert source is not None and source.layout == "upstream" and source.epoch == 7


_NAME = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
_KEY = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}(\.[A-Za-z0-9_]{1,6}){0,2}", fullmatch=True)


@settings(max_examples=150, deadline=None)
@given(
    states=st.dictionaries(
        _NAME, st.dictionaries(_KEY, st.integers(0, 3), max_size=3), min_size=1, max_size=5
    ),
    upstream=st.booleans(),
)
def test_node_states_round_trips_either_layout(states, upstream):
    names = list(states)
    flat: dict[str, torch.Tensor] = {}
    for index, (node, keys) in enumerate(states.items()):
        prefix = f"pipeline_modules.{index}." if upstream else f"pipeline.nodes.{node}."
        for key, size in keys.items():
            flat[prefix + key] = torch.zeros(size)
    payload = {"pytorch-lightning_version": "2.6.6", "epoch": 0, "global_step": 0, "state_dict": flat}
    assert checkpoints.is_checkpoint(payload)
    got = checkpoints.node_states(payload, names)
    assert {n: {k: v.shape[0] for k, v in s.items()} for n, s in got.items()} == states


@settings(max_examples=150, deadline=None)
@given(keys=st.lists(st.text(max_size=30), max_size=4), names=st.lists(_NAME, max_size=3, unique=True))
def test_node_states_refuses_anything_else_with_invalid_argument(keys, names):
    payload = {"pytorch-lightning_version": "2.6.6", "state_dict": {k: torch.zeros(1) for k in keys}}
    try:
        got = checkpoints.node_states(payload, names)
    except InvalidArgument as exc:
        assert exc.field == "weights"
    else:
        assert set(got) == set(names)
