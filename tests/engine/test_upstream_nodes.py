"""Our native nodes against upstream cuvis-ai's classes they serve (contract C4).

For each class: the same hparams give the same state_dict keys and shapes, and the same outputs on the same
input, either after fitting both on the same train stream or after copying upstream's state into ours.
Tolerances are stated per test; ``equal`` means bit-identical.

Imports ``cuvis_ai.node`` (about 6 s), once for the module.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from cuvis_cluster.engine.nodes import BUILTIN
from cuvis_cluster.engine.nodes.anomaly import RXGlobal
from cuvis_cluster.engine.nodes.conversion import ScoreToLogit
from cuvis_cluster.engine.nodes.deciders import BinaryDecider, QuantileBinaryDecider
from cuvis_cluster.engine.nodes.deep_svdd import DeepSVDDCenterTracker, DeepSVDDProjection, DeepSVDDScores
from cuvis_cluster.engine.nodes.normalization import MinMaxNormalizer, ZScoreNormalizerGlobal
from cuvis_cluster.engine.nodes.selection import SoftChannelSelector

up = pytest.importorskip("cuvis_ai.node")
from cuvis_ai.node.anomaly import deep_svdd as up_svdd  # noqa: E402
from cuvis_ai.node.anomaly import rx_detector as up_rx  # noqa: E402
from cuvis_ai.node.deciders import binary_decider as up_dec  # noqa: E402
from cuvis_ai_schemas.enums import ExecutionStage  # noqa: E402
from cuvis_ai_schemas.execution import Context  # noqa: E402

INFERENCE = Context(stage=ExecutionStage.INFERENCE)


def layout(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def cubes(seed: int, n: int = 3, shape: tuple[int, ...] = (2, 6, 7, 5)) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(*shape, generator=g) * (1 + i) for i in range(n)]


def stream(port: str, tensors: list[torch.Tensor]) -> Iterator[dict[str, Any]]:
    return iter([{port: t} for t in tensors])


def test_every_native_class_names_existing_upstream_classes() -> None:
    import importlib

    claimed = {}
    for cls in set(BUILTIN.values()):
        for full in getattr(cls, "UPSTREAM_CLASSES", ()):
            module, _, name = full.rpartition(".")
            upstream_cls = getattr(importlib.import_module(module), name)
            assert claimed.setdefault(full, cls) is cls, f"{full} claimed twice"
            ours = set(cls.INPUTS)
            theirs = set(upstream_cls.INPUT_SPECS)
            assert theirs <= ours, f"{cls.__name__}: upstream inputs {theirs - ours} missing"
            assert set(upstream_cls.OUTPUT_SPECS) <= set(cls.OUTPUTS), cls.__name__
    assert "cuvis_ai.node.anomaly.rx_detector.RXGlobal" in claimed
    assert len(claimed) >= 18


def test_rx_global_fits_like_upstream_and_scores_identically_on_its_state() -> None:
    train, test = cubes(1), cubes(2, n=1)[0]
    ours, theirs = RXGlobal(num_channels=5), up_rx.RXGlobal(num_channels=5)
    assert layout(ours) == layout(theirs)
    ours.fit(list(stream("data", train)))
    theirs.statistical_initialization(stream("data", train))
    assert layout(ours) == layout(theirs)
    for key in ("mu", "cov"):  # float64 streaming on both sides; cov_inv is a pinv of float32 cov
        torch.testing.assert_close(ours.state_dict()[key], theirs.state_dict()[key], rtol=1e-5, atol=1e-7)
    expected = theirs(data=test)["scores"]
    torch.testing.assert_close(ours(data=test)["scores"], expected, rtol=1e-4, atol=1e-4)
    loaded = RXGlobal(num_channels=5)
    loaded.load_state_dict(theirs.state_dict())
    loaded.fitted = True
    got = loaded(data=test)["scores"]  # same buffers: tolerance of float32 einsum order only
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("cap", [None, 1, 3, 100])
def test_min_max_normalizer_max_initialization_frames(cap: int | None) -> None:
    train = cubes(3, n=3, shape=(2, 3, 3, 4))  # frames 0..5 in batches of 2; later frames have larger range
    ours = MinMaxNormalizer(max_initialization_frames=cap)
    theirs = up.normalization.MinMaxNormalizer(max_initialization_frames=cap)
    ours.fit(list(stream("data", train)))
    theirs.statistical_initialization(stream("data", train))
    assert layout(ours) == layout(theirs)
    for key in ("running_min", "running_max"):
        assert torch.equal(ours.state_dict()[key], theirs.state_dict()[key]), key
    x = cubes(4, n=1, shape=(1, 3, 3, 4))[0]
    assert torch.equal(ours(data=x)["normalized"], theirs(data=x)["normalized"])
    if cap == 1:
        assert float(ours.running_max) == pytest.approx(float(train[0][0].max()))
    with pytest.raises(TypeError, match="max_initialization_frames"):
        MinMaxNormalizer(max_initialization_frames=0)


def test_score_to_logit_fits_bias_like_upstream() -> None:
    scores = [t[..., :1] for t in cubes(5)]
    ours, theirs = ScoreToLogit(init_scale=2.0), up.conversion.ScoreToLogit(init_scale=2.0)
    ours.fit(list(stream("scores", scores)))
    theirs.statistical_initialization(stream("scores", scores))
    assert layout(ours) == layout(theirs)
    torch.testing.assert_close(ours.bias, theirs.bias, rtol=1e-6, atol=1e-6)
    loaded = ScoreToLogit(init_scale=2.0)
    loaded.load_state_dict(theirs.state_dict())
    assert torch.equal(loaded(scores=scores[0])["logits"], theirs(scores=scores[0])["logits"])


def test_binary_decider_is_stateless_and_decides_identically() -> None:
    logits = torch.randn(2, 5, 5, 1, generator=torch.Generator().manual_seed(6))
    for t in (0.5, 0.3, 0.91):
        ours, theirs = BinaryDecider(threshold=t), up_dec.BinaryDecider(threshold=t)
        assert layout(ours) == layout(theirs) == {}
        assert torch.equal(ours(logits=logits)["decisions"], theirs(logits=logits)["decisions"])
        assert ours.params["threshold"] == t


@pytest.mark.parametrize("reduce_dims", [None, [1, 2], [-1]])
def test_quantile_binary_decider_is_stateless_and_decides_identically(reduce_dims: list[int] | None) -> None:
    x = torch.randn(2, 9, 8, 3, generator=torch.Generator().manual_seed(7))
    ours = QuantileBinaryDecider(quantile=0.9, reduce_dims=reduce_dims)
    theirs = up_dec.QuantileBinaryDecider(quantile=0.9, reduce_dims=reduce_dims)
    assert layout(ours) == layout(theirs) == {}
    assert torch.equal(ours(logits=x)["decisions"], theirs(logits=x)["decisions"])


@pytest.mark.parametrize("hard", [False, True])
def test_soft_channel_selector_variance_init_and_selection(hard: bool) -> None:
    train = cubes(8)
    hp = dict(n_select=2, input_channels=5, init_method="variance", hard=hard)
    ours, theirs = SoftChannelSelector(**hp), up.channel_selector.SoftChannelSelector(**hp)
    assert layout(ours) == layout(theirs) == {"channel_logits": (5,)}
    ours.fit(list(stream("data", train)))
    theirs.statistical_initialization(stream("data", train))
    torch.testing.assert_close(ours.channel_logits, theirs.channel_logits, rtol=1e-5, atol=1e-6)
    ours.load_state_dict(theirs.state_dict())
    for epoch in (0, 3):
        ours.on_epoch_start(epoch)
        theirs.update_temperature(epoch)
        assert ours.temperature == pytest.approx(theirs.temperature)
        for mode in (True, False):
            ours.train(mode)
            theirs.train(mode)
            a, b = ours(data=train[0]), theirs(data=train[0])
            assert torch.equal(a["weights"], b["weights"]) and torch.equal(a["selected"], b["selected"])


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_deep_svdd_projection_same_seed_same_weights_same_embeddings(kernel: str) -> None:
    hp = dict(in_channels=5, rep_dim=4, hidden=6, kernel=kernel, n_rff=12, mlp_forward_batch_size=7)
    torch.manual_seed(11)
    ours = DeepSVDDProjection(**hp)
    torch.manual_seed(11)
    theirs = up_svdd.DeepSVDDProjection(**hp)
    assert layout(ours) == layout(theirs)
    for key, value in theirs.state_dict().items():  # same init calls in the same order
        assert torch.equal(ours.state_dict()[key], value), key
    x = cubes(12, n=1)[0]
    ours.eval()
    with torch.no_grad():
        assert torch.equal(ours(data=x)["embeddings"], theirs(data=x)["embeddings"])


def test_deep_svdd_centre_and_scores_match_upstream() -> None:
    embeddings = [t[..., :4] for t in cubes(13)]
    ours, theirs = (
        DeepSVDDCenterTracker(rep_dim=4, alpha=0.2),
        up_svdd.DeepSVDDCenterTracker(rep_dim=4, alpha=0.2),
    )
    assert layout(ours) == layout(theirs) == {"_tracked_center": (4,)}
    ours.fit(list(stream("embeddings", embeddings)))
    theirs.statistical_initialization(stream("embeddings", embeddings))
    torch.testing.assert_close(ours.center, theirs._tracked_center, rtol=1e-6, atol=1e-7)
    ours.load_state_dict(theirs.state_dict())
    ours.eval()
    centre = ours(embeddings=embeddings[0])["center"]
    assert torch.equal(centre, theirs(embeddings=embeddings[0], context=INFERENCE)["center"])
    ours.train()  # a train step moves the centre by the same EMA step as upstream's
    moved = ours(embeddings=embeddings[1])["center"]
    expected = theirs(embeddings=embeddings[1], context=Context(stage=ExecutionStage.TRAIN))["center"]
    torch.testing.assert_close(moved, expected, rtol=1e-6, atol=1e-7)
    score_ours = DeepSVDDScores(name="scores")(embeddings=embeddings[2], center=moved)["scores"]
    score_up = up_svdd.DeepSVDDScores()(embeddings=embeddings[2], center=expected)["scores"]
    torch.testing.assert_close(score_ours, score_up, rtol=1e-6, atol=1e-6)


def test_zscore_normalizer_stores_std_plus_eps_like_upstream() -> None:
    train = cubes(14)
    ours = ZScoreNormalizerGlobal(num_channels=5, hidden=8)  # upstream's YAML passes an unused ``hidden``
    theirs = up_svdd.ZScoreNormalizerGlobal(num_channels=5, hidden=8)
    ours.fit(list(stream("data", train)))
    theirs.statistical_initialization(stream("data", train))
    assert layout(ours) == layout(theirs)
    torch.testing.assert_close(ours.zscore_std, theirs.zscore_std, rtol=1e-6, atol=1e-7)
    ours.load_state_dict(theirs.state_dict())
    assert torch.equal(ours(data=train[0])["normalized"], theirs(data=train[0])["normalized"])


def test_stateless_nodes_give_upstream_outputs() -> None:
    from cuvis_cluster.engine.nodes.anomaly import RXPerBatch
    from cuvis_cluster.engine.nodes.losses import (
        AnomalyBCEWithLogits,
        SelectorDiversityRegularizer,
        SelectorEntropyRegularizer,
    )
    from cuvis_cluster.engine.nodes.normalization import PerPixelUnitNorm

    x = cubes(15, n=1)[0]
    torch.testing.assert_close(
        RXPerBatch()(data=x)["scores"], up_rx.RXPerBatch()(data=x)["scores"], rtol=1e-4, atol=1e-4
    )
    assert torch.equal(
        PerPixelUnitNorm()(data=x)["normalized"], up.normalization.PerPixelUnitNorm()(data=x)["normalized"]
    )
    logits, targets = x[..., :1] - 0.5, x[..., 1:2] > 0.7
    for hp in ({}, {"weight": 3.0, "pos_weight": 4.0}):
        torch.testing.assert_close(
            AnomalyBCEWithLogits(**hp)(predictions=logits, targets=targets)["loss"],
            up.losses.AnomalyBCEWithLogits(**hp)(predictions=logits, targets=targets)["loss"],
        )
    w = torch.softmax(torch.randn(7, generator=torch.Generator().manual_seed(16)), 0) * 3
    for hp in ({}, {"weight": 0.5, "target_entropy": 1.0}):
        torch.testing.assert_close(
            SelectorEntropyRegularizer(**hp)(weights=w)["loss"],
            up.losses.SelectorEntropyRegularizer(**hp)(weights=w)["loss"],
        )
    torch.testing.assert_close(
        SelectorDiversityRegularizer(weight=2.0)(weights=w)["loss"],
        up.losses.SelectorDiversityRegularizer(weight=2.0)(weights=w)["loss"],
    )


def test_rx_file_without_cached_inverse_loads_and_scores_like_upstream() -> None:
    from cuvis_cluster.engine.weights import load_node_states

    train, test = cubes(17), cubes(18, n=1)[0]
    theirs = up_rx.RXGlobal(num_channels=5, cache_inverse=False)
    theirs.statistical_initialization(stream("data", train))
    assert theirs.state_dict()["cov_inv"].shape == (0, 0)
    ours = RXGlobal(num_channels=5, cache_inverse=False)
    load_node_states({"rx": ours}, {"state_dict": {"rx": theirs.state_dict()}, "metadata": {}}, strict=True)
    torch.testing.assert_close(ours(data=test)["scores"], theirs(data=test)["scores"], rtol=1e-4, atol=1e-4)


def test_center_tracker_takes_alpha_in_the_range_upstream_takes() -> None:
    # A pipeline of ours must load upstream, so the hparam ranges are upstream's: alpha in (0, 1].
    for alpha in (0.0, -0.5, 1.5):
        with pytest.raises((TypeError, ValueError)):
            up_svdd.DeepSVDDCenterTracker(rep_dim=4, alpha=alpha)
        with pytest.raises(TypeError, match="alpha"):
            DeepSVDDCenterTracker(rep_dim=4, alpha=alpha)
    for alpha in (1e-6, 1.0):
        assert up_svdd.DeepSVDDCenterTracker(rep_dim=4, alpha=alpha).alpha == alpha
        assert DeepSVDDCenterTracker(rep_dim=4, alpha=alpha).alpha == alpha
