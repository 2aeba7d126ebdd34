"""Round trips with upstream CUVIS.AI's own in-process engine, both directions, ``strict=True``.

Upstream trains RX (statistical), the channel selector and Deep SVDD (statistical + a gradient epoch) on
tiny synthetic frames and saves them its way (YAML + ``.pt``); our engine loads those files unchanged and
must give upstream's outputs on a frame neither saw. Then ours saves them (SavePipeline) and upstream's
engine loads what we wrote and must give the same outputs again. Tolerance: bit-identical for RX and the
selector; Deep SVDD within 1e-5 (float reductions in a different order).
"""

from __future__ import annotations

import pytest
import torch
import upstream_side as up
from upstream_side import ROUND_TRIP

pytestmark = pytest.mark.slow

# outputs a user reads, per pipeline; all must exist in both engines
KEY_OUTPUTS = {
    "anomaly/rx/rx_statistical": ("RXGlobal.scores", "ScoreToLogit.logits", "BinaryDecider.decisions"),
    "anomaly/rx/channel_selector": (
        "SoftChannelSelector.weights",
        "RXGlobal.scores",
        "ScoreToLogit.logits",
        "BinaryDecider.decisions",
    ),
    "anomaly/deep_svdd/deep_svdd": (
        "DeepSVDDProjection.embeddings",
        "DeepSVDDScores.scores",
        "QuantileBinaryDecider.decisions",
    ),
}
TOLERANCE = {"anomaly/rx/rx_statistical": 0.0, "anomaly/rx/channel_selector": 0.0}
SVDD_TOL = 1e-5


def assert_same(name: str, theirs: dict, mine: dict) -> None:
    missing = [k for k in KEY_OUTPUTS[name] if k not in theirs or k not in mine]
    assert not missing, f"{name}: outputs missing on one side: {missing}; ours: {sorted(mine)}"
    tol = TOLERANCE.get(name, SVDD_TOL)
    for key in KEY_OUTPUTS[name]:
        a, b = theirs[key].detach().cpu(), mine[key].detach().cpu()
        assert a.shape == b.shape, f"{name} {key}: shape {tuple(a.shape)} vs {tuple(b.shape)}"
        if a.dtype == torch.bool or b.dtype == torch.bool:
            # Deep SVDD: a 1e-5 score difference may flip a pixel sitting on the quantile threshold
            flipped = up.flipped_fraction(a, b)
            assert flipped is not None and flipped <= (0.0 if tol == 0.0 else 1e-3), (
                f"{name} {key}: {flipped} of the decisions differ"
            )
            continue
        diff = up.max_abs_diff(a, b)
        assert diff is not None and diff <= tol * max(1.0, float(a.abs().max())), (
            f"{name} {key}: max abs diff {diff} > {tol}"
        )


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_upstream_trained_files_load_strict_in_ours_and_match(name, upstream_trained, ours):
    trained = upstream_trained[name]
    sid = ours.load(trained.yaml.read_text(encoding="utf-8"))
    ours.load_weights(sid, trained.weights, strict=True)
    batch = up.frame_batch(7)
    assert_same(name, up.infer(trained.pipeline, batch), ours.infer(sid, batch))


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_ours_saved_files_load_strict_in_upstream_and_match(name, upstream_trained, ours, tmp_path):
    trained = upstream_trained[name]
    sid = ours.load(trained.yaml.read_text(encoding="utf-8"))
    ours.load_weights(sid, trained.weights, strict=True)
    batch = up.frame_batch(9)
    mine = ours.infer(sid, batch)
    yaml_path, pt_path = ours.save(sid, f"{name.replace('/', '_')}_ours.yaml")
    assert pt_path.is_file()
    with up.quiet(tmp_path / "upstream"):
        theirs = up.load(yaml_path, pt_path, strict=True)
        assert_same(name, up.infer(theirs, batch), mine)
        # and upstream's reload of our files equals upstream's own trained pipeline
        assert_same(name, up.infer(trained.pipeline, batch), up.infer(theirs, batch))


def test_shipped_channel_selector_weights_load_strict_in_ours_and_match(ours, upstream_dir):
    """The ``.pt`` shipped in the cuvis-ai wheel, with its YAML, exactly as shipped."""
    name = "anomaly/rx/channel_selector"
    yaml_path = up.shipped(name)
    with up.quiet(upstream_dir / "shipped"):
        theirs = up.load(yaml_path, yaml_path.with_suffix(".pt"), strict=True)
        batch = up.frame_batch(3)
        expected = up.infer(theirs, batch)
    sid = ours.load(yaml_path.read_text(encoding="utf-8"))
    ours.load_weights(sid, yaml_path.with_suffix(".pt"), strict=True)
    assert_same(name, expected, ours.infer(sid, batch))
