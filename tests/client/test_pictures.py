"""Pictures render: PNGs open with PIL at a sensible size with real content; SVGs parse."""

from __future__ import annotations

import numpy as np
import pytest
from fake_server import SVG
from PIL import Image

from cuvis_cluster.client import pictures

WAVELENGTHS = np.linspace(430, 910, 61)


def _scene(h=24, w=32, c=61):
    rng = np.random.default_rng(1)
    cube = rng.integers(1000, 3000, size=(h, w, c)).astype(np.uint16)
    cube[5:10, 5:12] += 4000  # a bright blob
    scores = cube.astype(np.float32).mean(-1)[None, ..., None]
    return cube, scores


def _assert_picture(path, min_side=100):
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
        assert width >= min_side and height >= min_side
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.std() > 0 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10
    return pixels


def test_heatmap_png(tmp_path):
    _, scores = _scene()
    path = pictures.save_heatmap_png(scores, tmp_path / "sub" / "heat.png", title="rx.scores")
    _assert_picture(path)


def test_heatmap_of_a_constant_map_still_renders(tmp_path):
    path = pictures.save_heatmap_png(np.zeros((8, 8)), tmp_path / "flat.png")
    with Image.open(path) as image:
        assert image.size[0] > 50


def test_overlay_marks_decisions_in_red(tmp_path):
    cube, scores = _scene()
    decisions = scores > np.percentile(scores, 90)
    path = pictures.save_overlay_png(cube, decisions, tmp_path / "overlay.png", wavelengths=WAVELENGTHS)
    pixels = _assert_picture(path).astype(int)
    reddish = (pixels[..., 0] > 150) & (pixels[..., 1] < 120) & (pixels[..., 2] < 120)
    assert reddish.sum() > 20


def test_false_rgb_uses_bands_nearest_650_550_450():
    assert pictures.rgb_band_indices(WAVELENGTHS, 61) == (27, 15, 2)
    assert pictures.rgb_band_indices(np.tile(WAVELENGTHS, (2, 1)), 61) == (27, 15, 2)
    assert pictures.rgb_band_indices(None, 40) == (30, 20, 10)
    cube = np.zeros((4, 4, 61), np.float32)
    cube[..., 27] = np.arange(16).reshape(4, 4)
    rgb = pictures.false_rgb(cube, WAVELENGTHS)
    assert rgb.dtype == np.uint8 and rgb.shape == (4, 4, 3)
    assert rgb[..., 0].max() == 255 and rgb[..., 1].max() == 0


def test_overlay_size_mismatch_is_refused(tmp_path):
    cube, _ = _scene()
    with pytest.raises(ValueError, match="differ in size"):
        pictures.save_overlay_png(cube, np.zeros((3, 3), bool), tmp_path / "x.png")


def test_svg_is_checked_before_it_is_written(tmp_path):
    root = pictures.check_svg(pictures.save_svg(SVG, tmp_path / "graph.svg").read_bytes())
    assert root.tag.endswith("svg")
    with pytest.raises(ValueError, match="not an SVG"):
        pictures.save_svg(b"digraph { a -> b }", tmp_path / "bad.svg")
    assert not (tmp_path / "bad.svg").exists()


def test_write_outputs_writes_npz_heatmap_and_overlay(tmp_path):
    from cuvis_cluster.client import InferenceResult, numpy_to_proto, pb

    cube, scores = _scene()
    decisions = scores > scores.mean()
    outputs = {"rx.scores": numpy_to_proto(scores), "decider.decisions": numpy_to_proto(decisions)}
    resp = pb.InferenceResponse(outputs=outputs, metrics={"metrics.iou": 0.5})
    written = pictures.write_outputs(InferenceResult(resp), tmp_path, cube=cube, wavelengths=WAVELENGTHS)
    assert set(written) == {"npz", "heatmap", "overlay"}
    with np.load(written["npz"]) as data:
        assert data["rx.scores"].shape == scores.shape and float(data["metric:metrics.iou"]) == 0.5
    _assert_picture(written["heatmap"])
    _assert_picture(written["overlay"])
