"""Pictures for people: anomaly heatmaps, decisions over a false-RGB rendering, and pipeline SVGs.

matplotlib runs with the non-interactive Agg backend through its object API (no pyplot state), so this is
safe in threads and on machines without a display.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

#: Target wavelengths (nm) of the red, green and blue channels of the false-RGB rendering.
RGB_TARGETS_NM = (650.0, 550.0, 450.0)
_DPI = 100


def frame2d(array: Any, *, index: int = 0) -> np.ndarray:
    """One frame of a per-pixel map as ``[H, W]``; accepts ``[H,W]``, ``[H,W,1]``, ``[B,H,W(,1)]``."""
    a = np.asarray(array)
    if a.ndim == 4:
        a = a[index]
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    elif a.ndim == 3:
        a = a[index]
    if a.ndim != 2:
        raise ValueError(f"expected a per-pixel map, got shape {np.asarray(array).shape}")
    return a


def cube_frame(cube: Any, *, index: int = 0) -> np.ndarray:
    """One ``[H, W, C]`` frame of an HWC or BHWC cube."""
    c = np.asarray(cube)
    if c.ndim == 4:
        c = c[index]
    if c.ndim != 3:
        raise ValueError(f"expected an HWC or BHWC cube, got shape {np.asarray(cube).shape}")
    return c


def rgb_band_indices(wavelengths: Any, channels: int) -> tuple[int, int, int]:
    """Bands nearest 650/550/450 nm; without wavelengths, three bands spread over the channel range."""
    if wavelengths is None or np.asarray(wavelengths).size == 0:
        return (int(channels * 0.75), int(channels * 0.5), int(channels * 0.25))
    wl = np.asarray(wavelengths, dtype=np.float64).reshape(-1, np.asarray(wavelengths).shape[-1])[0]
    red, green, blue = (int(np.argmin(np.abs(wl - target))) for target in RGB_TARGETS_NM)
    return red, green, blue


def false_rgb(cube: Any, wavelengths: Any = None, *, index: int = 0) -> np.ndarray:
    """An ``[H, W, 3]`` uint8 image from three bands, each stretched between its 2nd and 98th percentile."""
    frame = cube_frame(cube, index=index).astype(np.float32)
    bands = rgb_band_indices(wavelengths, frame.shape[-1])
    rgb = frame[..., list(bands)]
    low = np.percentile(rgb, 2, axis=(0, 1))
    high = np.percentile(rgb, 98, axis=(0, 1))
    span = np.where(high > low, high - low, 1.0)
    return (np.clip((rgb - low) / span, 0.0, 1.0) * 255.0).astype(np.uint8)


def _figure(height: int, width: int, *, colorbar: bool) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    # At least 4 inches wide so small test frames still give a readable picture.
    scale = max(4.0 / (width / _DPI), 1.0)
    fig_w = width / _DPI * scale * (1.25 if colorbar else 1.0)
    fig_h = height / _DPI * scale + 0.5
    fig = Figure(figsize=(fig_w, fig_h), dpi=_DPI)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_axis_off()
    return fig, ax


def _save(fig: Any, path: str | Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(out, format="png", dpi=_DPI, bbox_inches="tight")
    return out


def save_heatmap_png(scores: Any, path: str | Path, *, title: str = "anomaly score", index: int = 0) -> Path:
    """Write an anomaly score map as a PNG heatmap with a colour bar."""
    data = frame2d(scores, index=index).astype(np.float32)
    fig, ax = _figure(*data.shape, colorbar=True)
    finite = data[np.isfinite(data)]
    vmin, vmax = (
        (float(np.percentile(finite, 1)), float(np.percentile(finite, 99))) if finite.size else (0, 1)
    )
    if vmax <= vmin:
        vmax = vmin + 1.0
    image = ax.imshow(data, cmap="inferno", vmin=vmin, vmax=vmax, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title)
    return _save(fig, path)


def save_overlay_png(
    cube: Any,
    decisions: Any,
    path: str | Path,
    *,
    wavelengths: Any = None,
    title: str = "decisions on false RGB",
    index: int = 0,
    color: tuple[float, float, float] = (1.0, 0.1, 0.1),
    alpha: float = 0.55,
) -> Path:
    """Write the decisions (pixels judged anomalous) in ``color`` over a false-RGB rendering of the cube."""
    rgb = false_rgb(cube, wavelengths, index=index).astype(np.float32) / 255.0
    mask = frame2d(decisions, index=index).astype(bool)
    if mask.shape != rgb.shape[:2]:
        raise ValueError(f"decisions {mask.shape} and cube {rgb.shape[:2]} differ in size")
    blended = rgb.copy()
    blended[mask] = (1.0 - alpha) * rgb[mask] + alpha * np.asarray(color, dtype=np.float32)
    fig, ax = _figure(*mask.shape, colorbar=False)
    ax.imshow(blended, interpolation="nearest")
    share = 100.0 * mask.mean() if mask.size else 0.0
    ax.set_title(f"{title} ({share:.1f}% flagged)")
    return _save(fig, path)


def check_svg(data: bytes) -> ET.Element:
    """Parse SVG bytes; raises ``ValueError`` when they are not an SVG document."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise ValueError(f"not an SVG document: {exc}") from exc
    if not root.tag.endswith("svg"):
        raise ValueError(f"not an SVG document: root element is <{root.tag}>")
    return root


def save_svg(data: bytes, path: str | Path) -> Path:
    """Check that ``data`` (from GetPipelineVisualization) is an SVG document and write it."""
    check_svg(data)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    return out


def write_outputs(
    result: Any,
    out_dir: str | Path,
    *,
    cube: Any = None,
    wavelengths: Any = None,
    stem: str = "inference",
    scores_name: str | None = None,
    decisions_name: str | None = None,
) -> dict[str, Path]:
    """Write an :class:`~cuvis_cluster.client.InferenceResult` as ``<stem>_outputs.npz`` plus pictures.

    Returns the written paths by kind: ``npz`` always, ``heatmap`` when there is a score map, ``overlay``
    when there are decisions and the cube is known.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    arrays = {name.replace("/", "_"): np.asarray(value) for name, value in result.outputs.items()}
    for name, value in result.metrics.items():
        arrays[f"metric:{name}"] = np.asarray(value, dtype=np.float32)
    npz = out / f"{stem}_outputs.npz"
    # Output names are arbitrary keywords here; numpy's stubs read any keyword as possibly `allow_pickle`.
    save_npz: Callable[..., None] = np.savez_compressed
    save_npz(npz, **arrays)
    written["npz"] = npz
    scores = (scores_name, result[scores_name]) if scores_name else result.scores()
    if scores is not None:
        written["heatmap"] = save_heatmap_png(scores[1], out / f"{stem}_heatmap.png", title=scores[0])
    decisions = (decisions_name, result[decisions_name]) if decisions_name else result.decisions()
    if decisions is not None and cube is not None:
        written["overlay"] = save_overlay_png(
            cube, decisions[1], out / f"{stem}_overlay.png", wavelengths=wavelengths, title=decisions[0]
        )
    return written
