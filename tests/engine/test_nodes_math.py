"""Each node's math against a direct numpy/torch reference on random data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cuvis_cluster.engine.nodes._common import StreamingMoments
from cuvis_cluster.engine.nodes.anomaly import RXGlobal, RXPerBatch
from cuvis_cluster.engine.nodes.base import Stage
from cuvis_cluster.engine.nodes.conversion import ScoreToLogit
from cuvis_cluster.engine.nodes.deciders import BinaryDecider, QuantileBinaryDecider
from cuvis_cluster.engine.nodes.deep_svdd import (
    DeepSVDDCenterTracker,
    DeepSVDDProjection,
    DeepSVDDScores,
    DeepSVDDSoftBoundaryLoss,
)
from cuvis_cluster.engine.nodes.io import HyperspectralInput
from cuvis_cluster.engine.nodes.losses import (
    AnomalyBCEWithLogits,
    SelectorDiversityRegularizer,
    SelectorEntropyRegularizer,
)
from cuvis_cluster.engine.nodes.metrics import AnomalyDetectionMetrics, average_precision
from cuvis_cluster.engine.nodes.normalization import (
    MinMaxNormalizer,
    PerPixelUnitNorm,
    ZScoreNormalizerGlobal,
)
from cuvis_cluster.engine.nodes.preprocessing import BandpassByWavelength
from cuvis_cluster.engine.nodes.selection import SoftChannelSelector
from cuvis_cluster.engine.nodes.visualization import (
    FalseRGBVisualizer,
    ScoreHeatmapVisualizer,
    colormap_lut,
    pick_rgb_bands,
)
from cuvis_cluster.errors import FailedPrecondition, InvalidArgument

LENTIL_NM = np.arange(430, 911, 8)


def cube(rng: np.random.Generator, b=2, h=6, w=7, c=5, offset=0.0, scale=1.0) -> torch.Tensor:
    # Correlated channels so the covariance is not diagonal.
    mix = rng.normal(size=(c, c))
    x = rng.normal(size=(b, h, w, c)) @ mix * scale + offset
    return torch.from_numpy(x.astype(np.float32))


def batches_of(x: torch.Tensor, sizes=(1, 1)) -> list[dict[str, torch.Tensor]]:
    out, start = [], 0
    for s in sizes:
        out.append({"data": x[start : start + s]})
        start += s
    return out


# -- streaming statistics ---------------------------------------------------------------------------
def test_streaming_moments_equal_batch_computation_even_with_a_large_offset() -> None:
    rng = np.random.default_rng(0)
    data = rng.normal(size=(1000, 6)) * 0.01 + 1e4  # tiny spread around a huge mean
    moments = StreamingMoments(full=True)
    diag = StreamingMoments(full=False)
    for chunk in np.array_split(data, [1, 7, 300, 301, 640]):
        moments.update(torch.from_numpy(chunk))
        diag.update(torch.from_numpy(chunk))
    np.testing.assert_allclose(moments.mean.numpy(), data.mean(0), rtol=1e-12)
    np.testing.assert_allclose(
        moments.covariance().numpy(), np.cov(data, rowvar=False), rtol=1e-7, atol=1e-12
    )
    np.testing.assert_allclose(diag.variance().numpy(), data.var(0, ddof=1), rtol=1e-7)
    assert moments.count == 1000


# -- RX ---------------------------------------------------------------------------------------------
def numpy_rx(x: np.ndarray, mu: np.ndarray, cov: np.ndarray) -> np.ndarray:
    inv = np.linalg.inv(cov)
    d = x.reshape(-1, x.shape[-1]) - mu
    return np.einsum("nc,cd,nd->n", d, inv, d).reshape(*x.shape[:-1], 1)


@pytest.mark.parametrize("cache_inverse", [True, False])
def test_rx_global_matches_numpy_mahalanobis(cache_inverse: bool) -> None:
    rng = np.random.default_rng(1)
    train = cube(rng, b=3, c=5, offset=3.0)
    rx = RXGlobal(num_channels=5, eps=1e-6, cache_inverse=cache_inverse)
    rx.fit(batches_of(train, (1, 2)))  # streamed over two batches
    flat = train.double().numpy().reshape(-1, 5)
    cov = np.cov(flat, rowvar=False) + 1e-6 * np.eye(5)
    np.testing.assert_allclose(rx.mu.numpy(), flat.mean(0), rtol=1e-5)
    np.testing.assert_allclose(rx.cov.numpy(), cov, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rx.cov_inv.numpy(), np.linalg.inv(cov), rtol=1e-4, atol=1e-5)
    test = cube(rng, b=2, c=5, offset=3.5)
    scores = rx(data=test)["scores"]
    assert scores.shape == (2, 6, 7, 1) and scores.dtype == torch.float32
    expected = numpy_rx(test.double().numpy(), flat.mean(0), cov)
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-4, atol=1e-4)


def test_rx_global_unfitted_and_wrong_channels() -> None:
    rx = RXGlobal(num_channels=4)
    rx.name = "rx"
    with pytest.raises(FailedPrecondition, match="rx"):
        rx(data=torch.rand(1, 2, 2, 4))
    rx.fit([{"data": torch.rand(1, 4, 4, 4)}])
    with pytest.raises(InvalidArgument) as info:
        rx(data=torch.rand(1, 2, 2, 5))
    assert info.value.field == "rx.data" and "5 channels, expected 4" in str(info.value)
    with pytest.raises(FailedPrecondition, match="train split"):
        RXGlobal(num_channels=4).fit([])


def test_rx_per_batch_matches_numpy_per_image() -> None:
    rng = np.random.default_rng(2)
    x = cube(rng, b=2, h=8, w=8, c=4)
    scores = RXPerBatch(eps=1e-6)(data=x)["scores"].numpy()
    for i in range(2):
        img = x[i].double().numpy().reshape(-1, 4)
        cov = np.cov(img, rowvar=False) + 1e-6 * np.eye(4)
        np.testing.assert_allclose(
            scores[i], numpy_rx(x[i].double().numpy(), img.mean(0), cov), rtol=1e-4, atol=1e-4
        )


def test_rx_gradient_training_keeps_cov_inv_consistent() -> None:
    rng = np.random.default_rng(3)
    x = cube(rng, b=2, c=4) * 0.01  # normalised-data scale: raw covariance entries ~1e-4
    rx = RXGlobal(num_channels=4)
    rx.fit([{"data": x}])
    before = rx(data=x)["scores"]
    rx.unfreeze()
    assert {name for name, _ in rx.named_parameters()} == {"mu_delta", "chol_delta"}
    torch.testing.assert_close(
        rx(data=x)["scores"], before, rtol=1e-4, atol=1e-4
    )  # unfreezing changes nothing
    optimizer = torch.optim.Adam(rx.parameters(), lr=1e-2)
    for _ in range(3):
        loss = rx(data=x)["scores"].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert rx.chol_delta.grad is not None and rx.mu_delta.grad is not None
    # Unit-scale offsets: the model moved, but by a few percent, not by orders of magnitude.
    after = rx(data=x)["scores"].detach()
    assert 0.5 < float(after.mean() / before.mean()) < 1.0
    cov = rx.cov.double().numpy()
    np.testing.assert_allclose(rx.cov_inv.double().numpy(), np.linalg.inv(cov), rtol=1e-3)
    assert np.all(np.linalg.eigvalsh(cov) > 0)
    state = rx.state_dict()
    assert set(state) == {"mu", "cov", "cov_inv"}  # checkpoints never hold the offsets
    frozen_copy = RXGlobal(num_channels=4)
    frozen_copy.load_state_dict(state)
    torch.testing.assert_close(frozen_copy(data=x)["scores"], after, rtol=1e-4, atol=1e-4)
    rx.freeze()
    assert not list(rx.parameters()) and set(rx.state_dict()) == {"mu", "cov", "cov_inv"}
    torch.testing.assert_close(rx(data=x)["scores"], after, rtol=1e-4, atol=1e-4)
    expected = numpy_rx(x.double().numpy(), rx.mu.double().numpy(), cov)
    np.testing.assert_allclose(rx(data=x)["scores"].numpy(), expected, rtol=1e-3, atol=1e-3)


def test_rx_state_dict_loads_across_frozen_and_unfrozen() -> None:
    rng = np.random.default_rng(4)
    x = cube(rng, c=3)
    trained = RXGlobal(num_channels=3)
    trained.fit([{"data": x}])
    trained.unfreeze()
    fresh = RXGlobal(num_channels=3)
    assert not fresh.fitted
    fresh.load_state_dict(trained.state_dict())
    assert fresh.fitted
    torch.testing.assert_close(fresh(data=x)["scores"], trained(data=x)["scores"].detach())
    # And the other way: a frozen checkpoint into an unfrozen node re-bases its offsets.
    other = RXGlobal(num_channels=3)
    other.fit([{"data": x * 2}])
    other.unfreeze()
    other.load_state_dict(fresh.state_dict())
    torch.testing.assert_close(
        other(data=x)["scores"].detach(), fresh(data=x)["scores"], rtol=1e-4, atol=1e-4
    )
    # Statistical training after gradient training re-fits and keeps the node trainable.
    other.fit([{"data": x}])
    assert other.unfrozen and float(other.mu_delta.detach().abs().sum()) == 0.0


# -- normalizers ------------------------------------------------------------------------------------
def test_minmax_running_stats_are_global_over_the_stream() -> None:
    rng = np.random.default_rng(5)
    x = cube(rng, b=3, offset=100.0, scale=20.0)
    node = MinMaxNormalizer(eps=1e-6)
    with pytest.raises(FailedPrecondition):
        node(data=x)
    node.fit(batches_of(x, (2, 1)))
    lo, hi = float(x.min()), float(x.max())
    assert float(node.running_min) == pytest.approx(lo) and float(node.running_max) == pytest.approx(hi)
    out = node(data=x)["normalized"]
    torch.testing.assert_close(out, (x - lo) / (hi - lo))
    assert float(out.min()) == pytest.approx(0.0) and float(out.max()) == pytest.approx(1.0)


def test_minmax_per_sample_without_running_stats() -> None:
    rng = np.random.default_rng(6)
    x = cube(rng, b=2)
    out = MinMaxNormalizer(use_running_stats=False)(data=x)["normalized"].numpy()
    for i in range(2):
        xi = x[i].numpy()
        np.testing.assert_allclose(out[i], (xi - xi.min()) / (xi.max() - xi.min()), rtol=1e-5, atol=1e-6)
    constant = MinMaxNormalizer(use_running_stats=False, eps=1e-6)(data=torch.full((1, 2, 2, 3), 7.0))
    assert torch.all(constant["normalized"] == 0)


def test_zscore_global_matches_numpy() -> None:
    rng = np.random.default_rng(7)
    x = cube(rng, b=3, c=4, offset=50.0, scale=3.0)
    node = ZScoreNormalizerGlobal(num_channels=4, eps=1e-8, hidden=99)
    node.fit(batches_of(x, (1, 2)))
    flat = x.double().numpy().reshape(-1, 4)
    np.testing.assert_allclose(node.zscore_mean.numpy(), flat.mean(0), rtol=1e-6)
    np.testing.assert_allclose(node.zscore_std.numpy(), flat.std(0, ddof=1), rtol=1e-5)
    out = node(data=x)["normalized"].double().numpy().reshape(-1, 4)
    np.testing.assert_allclose(out, (flat - flat.mean(0)) / flat.std(0, ddof=1), rtol=1e-4, atol=1e-4)


def test_per_pixel_unit_norm_matches_numpy() -> None:
    rng = np.random.default_rng(8)
    x = cube(rng, c=6)
    out = PerPixelUnitNorm(eps=1e-8)(data=x)["normalized"].numpy()
    xn = x.numpy()
    centred = xn - xn.mean(-1, keepdims=True)
    np.testing.assert_allclose(
        out, centred / np.linalg.norm(centred, axis=-1, keepdims=True), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, rtol=1e-5)


# -- band-pass and input ----------------------------------------------------------------------------
def test_bandpass_700nm_keeps_27_lentil_bands_and_accepts_int_batched_wavelengths() -> None:
    x = torch.rand(2, 3, 3, 61)
    wl = torch.from_numpy(LENTIL_NM.astype(np.int32)).repeat(2, 1)  # [B, C] int32 as clients send
    out = BandpassByWavelength(min_wavelength_nm=700)(data=x, wavelengths=wl)["filtered"]
    assert out.shape == (2, 3, 3, 27)
    torch.testing.assert_close(out, x[..., LENTIL_NM >= 700])
    window = BandpassByWavelength(min_wavelength_nm=500, max_wavelength_nm=600)(data=x, wavelengths=wl[0])
    torch.testing.assert_close(window["filtered"], x[..., (LENTIL_NM >= 500) & (LENTIL_NM <= 600)])
    with pytest.raises(InvalidArgument, match="no band"):
        BandpassByWavelength(min_wavelength_nm=2000)(data=x, wavelengths=wl)
    with pytest.raises(InvalidArgument, match="wavelengths"):
        BandpassByWavelength(min_wavelength_nm=700)(data=x, wavelengths=wl[0, :10])


def test_hyperspectral_input_casts_and_derives_the_anomaly_mask() -> None:
    raw = torch.randint(0, 16000, (2, 3, 4, 5), dtype=torch.int32).to(torch.uint16)
    classes = torch.tensor([0, 1, 2, 3, 4, 1]).repeat(4)[: 2 * 3 * 4].reshape(2, 3, 4).to(torch.int32)
    wl = torch.tensor([[430, 438, 446, 454, 462]], dtype=torch.int32)
    out = HyperspectralInput(normal_class_ids=[0, 1])(cube=raw, mask=classes, wavelengths=wl)
    assert out["cube"].dtype == torch.float32 and torch.equal(out["cube"], raw.to(torch.int64).float())
    assert out["mask"].shape == (2, 3, 4, 1) and out["mask"].dtype == torch.bool
    assert torch.equal(out["mask"][..., 0], classes >= 2)
    assert out["wavelengths"].shape == (5,) and out["wavelengths"].dtype == torch.float32
    only_stones = HyperspectralInput(anomaly_class_ids=[3])(cube=raw, mask=classes)
    assert torch.equal(only_stones["mask"][..., 0], classes == 3) and "wavelengths" not in only_stones
    assert set(HyperspectralInput()(cube=raw)) == {"cube"}
    with pytest.raises(InvalidArgument, match="mask"):
        HyperspectralInput()(cube=raw, mask=classes[:, :2])


# -- score to logit, selector -----------------------------------------------------------------------
def test_score_to_logit_fits_bias_to_mean_plus_two_std() -> None:
    rng = np.random.default_rng(9)
    scores = torch.from_numpy(rng.gamma(2.0, 3.0, size=(3, 4, 5, 1)).astype(np.float32))
    node = ScoreToLogit(init_scale=0.5, init_bias=1.0)
    torch.testing.assert_close(node(scores=scores)["logits"], 0.5 * (scores - 1.0))  # usable unfitted
    node.fit([{"scores": scores[:1]}, {"scores": scores[1:]}])
    flat = scores.double().numpy().ravel()
    assert float(node.bias) == pytest.approx(flat.mean() + 2 * flat.std(ddof=1), rel=1e-5)
    assert float(node.scale) == 0.5
    torch.testing.assert_close(node(scores=scores)["logits"], 0.5 * (scores - node.bias))


def test_soft_channel_selector_weights_and_temperature() -> None:
    rng = np.random.default_rng(10)
    x = cube(rng, c=6)
    node = SoftChannelSelector(n_select=2, input_channels=6, temperature_init=5.0, temperature_decay=0.5)
    with torch.no_grad():
        node.channel_logits.copy_(torch.tensor([0.1, 2.0, -1.0, 0.5, 3.0, 0.0]))
    out = node(data=x)
    expected = torch.softmax(node.channel_logits / 5.0, 0) * 2
    torch.testing.assert_close(out["weights"], expected)
    assert float(out["weights"].sum()) == pytest.approx(2.0, rel=1e-6)
    torch.testing.assert_close(out["selected"], x * expected)
    node.on_epoch_start(3)
    assert float(node.temperature) == pytest.approx(5.0 * 0.5**3)
    node.on_epoch_start(100)
    assert float(node.temperature) == pytest.approx(0.1)  # temperature_min
    assert float(node(data=x)["weights"].sum()) == pytest.approx(2.0, rel=1e-5)


def test_soft_channel_selector_variance_init_and_hard_eval() -> None:
    rng = np.random.default_rng(11)
    x = cube(rng, b=3, c=5) * torch.tensor([1.0, 5.0, 0.1, 3.0, 0.5])
    node = SoftChannelSelector(n_select=2, input_channels=5, init_method="variance", hard=True, eps=1e-6)
    assert not node.fitted
    node.fit(batches_of(x, (2, 1)))
    var = x.double().numpy().reshape(-1, 5).var(0, ddof=1)
    np.testing.assert_allclose(node.channel_logits.numpy(), np.log(var + 1e-6), rtol=1e-5)
    node.eval()
    w = node(data=x)["weights"]
    top2 = set(np.argsort(var)[-2:].tolist())
    assert set(torch.nonzero(w).flatten().tolist()) == top2 and float(w.sum()) == 2.0
    node.train()
    assert torch.all(node(data=x)["weights"] > 0)  # soft again while training


def test_soft_channel_selector_learns_when_unfrozen_and_temperature_is_an_hparam() -> None:
    node = SoftChannelSelector(n_select=1, input_channels=3)
    node.unfreeze()
    x = torch.ones(1, 2, 2, 3)
    out = node(data=x)["selected"][..., 0].sum()
    out.backward()
    assert node.channel_logits.grad is not None
    node.on_epoch_start(4)
    assert node.temperature == pytest.approx(5.0 * 0.9**4)
    assert set(node.state_dict()) == {"channel_logits"}  # upstream's layout: no temperature state
    copy = SoftChannelSelector(n_select=1, input_channels=3)
    copy.load_state_dict(node.state_dict())
    assert copy.temperature == pytest.approx(5.0)  # as upstream: a reloaded node starts at temperature_init
    legacy = {**node.state_dict(), "temperature": torch.tensor(0.25)}  # this project's earlier layout
    old = SoftChannelSelector(n_select=1, input_channels=3)
    old.load_state_dict(legacy)
    assert old.temperature == pytest.approx(0.25)


# -- Deep SVDD --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_deep_svdd_projection_is_a_per_pixel_mlp(kernel: str) -> None:
    torch.manual_seed(0)
    node = DeepSVDDProjection(in_channels=4, rep_dim=3, hidden=8, kernel=kernel, n_rff=16)
    x = torch.rand(2, 3, 5, 4)
    z = node(data=x)["embeddings"]
    assert z.shape == (2, 3, 5, 3)
    pixel = x[1, 2, 4]
    mlp = node.net
    if kernel == "rbf":
        rff, mlp = node.net[0], node.net[1]
        pixel = (2.0 / 16) ** 0.5 * torch.cos(pixel @ rff.W + rff.b)
    expected = mlp.fc2(torch.relu(mlp.fc1(pixel[None])))[0]
    torch.testing.assert_close(z[1, 2, 4], expected)
    assert mlp.fc2.bias is None and mlp.fc1.bias is not None  # upstream's SpectralNet
    with torch.no_grad():
        chunked = DeepSVDDProjection(in_channels=4, rep_dim=3, hidden=8, kernel=kernel, n_rff=16)
        chunked.load_state_dict(node.state_dict())
        chunked.chunk = 7
        torch.testing.assert_close(chunked(data=x)["embeddings"], z.detach())


def test_deep_svdd_center_scores_and_loss() -> None:
    rng = np.random.default_rng(12)
    z = torch.from_numpy(rng.normal(size=(2, 4, 4, 3)).astype(np.float32))
    tracker = DeepSVDDCenterTracker(rep_dim=3, alpha=0.25)
    tracker.fit([{"embeddings": z[:1]}, {"embeddings": z[1:]}])
    c0 = z.reshape(-1, 3).mean(0)
    torch.testing.assert_close(tracker.center, c0)
    tracker.eval()
    out = tracker(embeddings=z + 1.0)
    torch.testing.assert_close(out["center"], c0)  # no update in eval
    assert float(out["metrics"]["center_norm"]) == pytest.approx(float(c0.norm()))
    tracker.train()
    out = tracker(embeddings=z + 1.0)
    torch.testing.assert_close(out["center"], 0.75 * c0 + 0.25 * (c0 + 1.0))

    c = out["center"]
    scores = DeepSVDDScores()(embeddings=z, center=c)["scores"]
    torch.testing.assert_close(scores, ((z - c) ** 2).sum(-1, keepdim=True))

    loss_node = DeepSVDDSoftBoundaryLoss(nu=0.1, weight=2.0)
    with torch.no_grad():
        loss_node.r_unconstrained.fill_(0.3)
    loss = loss_node(embeddings=z, center=c)["loss"]
    r2 = F.softplus(torch.tensor(0.3), beta=10.0) ** 2
    dist = ((z - c) ** 2).sum(-1)
    torch.testing.assert_close(loss, 2.0 * (r2 + torch.relu(dist - r2).mean() / 0.1))
    loss.backward()
    assert loss_node.r_unconstrained.grad is not None


def test_unfreeze_restores_always_learnable_parameters() -> None:
    node = DeepSVDDProjection(in_channels=3, rep_dim=2, hidden=4)
    node.freeze()
    assert not any(p.requires_grad for p in node.parameters())
    node.unfreeze()
    assert all(p.requires_grad for p in node.parameters())
    keys = set(node.state_dict())
    node.freeze()
    node.unfreeze()
    assert set(node.state_dict()) == keys


# -- deciders ---------------------------------------------------------------------------------------
def test_binary_decider_thresholds_the_sigmoid() -> None:
    logits = torch.tensor([-3.0, -0.1, 0.0, 0.2, 4.0]).reshape(1, 1, 5, 1)
    node = BinaryDecider(threshold=0.5)
    assert node(logits=logits)["decisions"].flatten().tolist() == [False, False, True, True, True]
    node.set_thresholds(threshold=0.9)
    assert node.get_thresholds() == {"threshold": pytest.approx(0.9)} and node.params["threshold"] == 0.9
    assert node(logits=logits)["decisions"].flatten().tolist() == [False, False, False, False, True]
    torch.testing.assert_close(node.calibration_scores(logits=logits), torch.sigmoid(logits))
    assert node.state_dict() == {}  # the threshold is an hparam, as upstream
    restored = BinaryDecider()
    restored.load_state_dict({"threshold": torch.tensor(0.9)})  # this project's earlier layout
    assert restored.get_thresholds()["threshold"] == pytest.approx(0.9)
    assert restored.params["threshold"] == pytest.approx(0.9)
    BinaryDecider().load_state_dict({})  # upstream's (empty) entry keeps the configured threshold
    with pytest.raises(InvalidArgument):
        node.set_thresholds(threshold=1.5)


def test_quantile_decider_matches_numpy_quantile_per_image() -> None:
    rng = np.random.default_rng(13)
    x = torch.from_numpy(rng.normal(size=(3, 10, 9, 1)).astype(np.float32))
    node = QuantileBinaryDecider(quantile=0.9)
    decisions = node(logits=x)["decisions"].numpy()
    for i in range(3):
        q = np.quantile(x[i].numpy(), 0.9)
        np.testing.assert_array_equal(decisions[i], x[i].numpy() >= q)
    per_channel = QuantileBinaryDecider(quantile=0.5, reduce_dims=[1, 2])
    y = torch.from_numpy(rng.normal(size=(2, 5, 5, 3)).astype(np.float32))
    d = per_channel(logits=y)["decisions"].numpy()
    for i in range(2):
        for ch in range(3):
            np.testing.assert_array_equal(
                d[i, ..., ch], y[i, ..., ch].numpy() >= np.median(y[i, ..., ch].numpy())
            )


# -- losses -----------------------------------------------------------------------------------------
def test_bce_matches_torch_reference() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 1)
    target = torch.rand(2, 3, 4, 1) > 0.7
    loss = AnomalyBCEWithLogits(weight=3.0, pos_weight=5.0)(predictions=logits, targets=target)["loss"]
    p = torch.sigmoid(logits)
    t = target.float()
    manual = -(5.0 * t * torch.log(p) + (1 - t) * torch.log(1 - p)).mean()
    torch.testing.assert_close(loss, 3.0 * manual)
    assert loss.dim() == 0


def test_selector_regularizers_match_formulas() -> None:
    w = torch.tensor([0.2, 1.5, 0.3, 1.0])
    p = w / w.sum()
    entropy = -(p * torch.log(p)).sum()
    loss = SelectorEntropyRegularizer(weight=0.5, eps=0.0)(weights=w)["loss"]
    torch.testing.assert_close(loss, 0.5 * -entropy)
    target = SelectorEntropyRegularizer(weight=2.0, target_entropy=1.0, eps=0.0)(weights=w)["loss"]
    torch.testing.assert_close(target, 2.0 * (entropy - 1.0) ** 2)
    diversity = SelectorDiversityRegularizer(weight=0.1)(weights=w)["loss"]
    torch.testing.assert_close(diversity, torch.tensor(-0.1 * np.var(w.numpy(), ddof=0), dtype=torch.float32))


# -- metrics ----------------------------------------------------------------------------------------
def test_detection_metrics_against_hand_counts() -> None:
    decisions = torch.tensor([1, 1, 0, 0, 1, 0, 0, 0], dtype=torch.bool).reshape(1, 2, 4, 1)
    targets = torch.tensor([1, 0, 1, 0, 1, 0, 0, 1], dtype=torch.bool).reshape(1, 2, 4, 1)
    # tp=2 (0,4), fp=1 (1), fn=2 (2,7)
    m = AnomalyDetectionMetrics()(decisions=decisions, targets=targets)["metrics"]
    assert float(m["precision"]) == pytest.approx(2 / 3)
    assert float(m["recall"]) == pytest.approx(2 / 4)
    assert float(m["f1"]) == pytest.approx(2 * 2 / (2 * 2 + 1 + 2))
    assert float(m["iou"]) == pytest.approx(2 / 5)
    assert "average_precision" not in m
    empty = AnomalyDetectionMetrics()(decisions=decisions & False, targets=targets & False)["metrics"]
    assert all(float(v) == 0.0 for v in empty.values())


def test_average_precision_by_hand_with_ties() -> None:
    scores = torch.tensor([0.9, 0.8, 0.8, 0.4, 0.3, 0.1])
    labels = torch.tensor([1, 0, 1, 0, 1, 0], dtype=torch.bool)
    # thresholds: 0.9 -> P=1, R=1/3; 0.8 (tie, 2 px) -> P=2/3, R=2/3; 0.4 -> P=2/4; 0.3 -> P=3/5, R=1
    expected = (1 / 3) * 1 + (1 / 3) * (2 / 3) + (1 / 3) * (3 / 5)
    assert float(average_precision(scores, labels)) == pytest.approx(expected)
    logits = torch.logit(scores)
    assert float(average_precision(logits * 50, labels)) == pytest.approx(expected)  # order only
    assert float(average_precision(scores, labels & False)) == 0.0
    node = AnomalyDetectionMetrics(execution_stages=["train", "val"])
    assert {Stage.TRAIN, Stage.VAL} == node.STAGES
    as_image = scores.reshape(1, 1, 6, 1)
    out = node(decisions=as_image > 0.5, targets=labels.reshape(1, 1, 6, 1), scores=as_image)
    assert float(out["metrics"]["average_precision"]) == pytest.approx(expected)


def test_average_precision_matches_brute_force_on_random_data() -> None:
    rng = np.random.default_rng(14)
    s = np.round(rng.random(300), 2)  # many ties
    y = rng.random(300) < 0.2
    total = 0.0
    prev_recall = 0.0
    for thr in np.unique(s)[::-1]:
        pred = s >= thr
        tp = (pred & y).sum()
        recall = tp / y.sum()
        total += (recall - prev_recall) * tp / pred.sum()
        prev_recall = recall
    assert float(average_precision(torch.from_numpy(s), torch.from_numpy(y))) == pytest.approx(
        total, rel=1e-6
    )


# -- visualizers ------------------------------------------------------------------------------------
def test_heatmap_uses_the_colormap_ends_for_min_and_max() -> None:
    scores = torch.tensor([0.0, 5.0, 10.0]).reshape(1, 1, 3, 1).repeat(2, 1, 1, 1)
    scores[1] *= 2
    image = ScoreHeatmapVisualizer(cmap="viridis", up_to=1)(scores=scores)["image"]
    lut = colormap_lut("viridis")
    assert image.shape == (1, 1, 3, 3) and image.dtype == torch.uint8
    assert image[0, 0, 0].tolist() == lut[0].tolist() and image[0, 0, 2].tolist() == lut[255].tolist()
    with pytest.raises(TypeError):
        ScoreHeatmapVisualizer(cmap="no-such-colormap")


def test_false_rgb_band_choice() -> None:
    wl = torch.from_numpy(LENTIL_NM.astype(np.float32))
    bands = pick_rgb_bands(61, wl, None, (650.0, 550.0, 450.0)).tolist()
    assert [int(LENTIL_NM[b]) for b in bands] == [646, 550, 446]
    weights = torch.zeros(61)
    weights[[5, 40, 20]] = torch.tensor([1.0, 3.0, 2.0])
    assert pick_rgb_bands(61, wl, weights, (650.0, 550.0, 450.0)).tolist() == [40, 20, 5]
    x = torch.rand(1, 4, 4, 61)
    image = FalseRGBVisualizer()(cube=x, wavelengths=wl)["image"]
    assert image.dtype == torch.uint8 and image.shape == (1, 4, 4, 3)
    assert int(image[..., 0].min()) == 0 and int(image[..., 0].max()) == 255


def test_average_precision_agrees_with_torchmetrics_on_probabilities() -> None:
    tm = pytest.importorskip("torchmetrics.functional.classification")
    torch.manual_seed(3)
    probs = torch.rand(500)
    labels = torch.rand(500) < 0.1
    expected = tm.binary_average_precision(probs, labels.long())
    assert float(average_precision(probs, labels)) == pytest.approx(float(expected), rel=1e-5)


def test_deep_svdd_projection_bias_false_is_bias_free_and_refuses_biased_weights():
    from cuvis_cluster.engine.nodes.deep_svdd import DeepSVDDProjection

    plain = DeepSVDDProjection(in_channels=5, rep_dim=3, hidden=4, bias=False)
    assert not any(name.endswith("bias") for name, _ in plain.named_parameters())
    assert plain.params["bias"] is False
    x = torch.randn(1, 2, 2, 5)
    assert torch.allclose(plain(data=x)["embeddings"] * 2, plain(data=2 * x)["embeddings"], atol=1e-5)

    biased = DeepSVDDProjection(in_channels=5, rep_dim=3, hidden=4)  # upstream's default: a hidden bias
    assert "bias" not in biased.params
    with pytest.raises(RuntimeError, match=r"net\.fc1\.bias"):
        plain.load_state_dict(biased.state_dict())
    plain.load_state_dict(biased.state_dict(), strict=False)  # drops the bias, keeps the weights
    assert torch.equal(plain.net.fc1.weight, biased.net.fc1.weight)
    again = DeepSVDDProjection(in_channels=5, rep_dim=3, hidden=4)
    again.load_state_dict(biased.state_dict())
    assert torch.equal(again(data=x)["embeddings"], biased(data=x)["embeddings"])


def test_deep_svdd_loss_leaves_masked_anomalous_pixels_out():
    from cuvis_cluster.engine.nodes.deep_svdd import DeepSVDDSoftBoundaryLoss

    loss = DeepSVDDSoftBoundaryLoss(nu=0.5)
    z = torch.zeros(1, 1, 2, 2)
    z[0, 0, 1] = 10.0  # one far pixel
    c = torch.zeros(2)
    mask = torch.tensor([[[[False], [True]]]])
    with torch.no_grad():
        far = loss(embeddings=z, center=c)["loss"]
        masked = loss(embeddings=z, center=c, mask=mask)["loss"]
    assert masked < far
    assert torch.allclose(masked, loss.radius() ** 2)  # the remaining pixel sits on the centre
