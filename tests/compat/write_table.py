"""Regenerate docs/upstream-compat.md: every pipeline YAML shipped in cuvis-ai, through upstream's own
in-process engine and ours, side by side (loads / runs / max abs diff of the outputs, or why not).

    .venv/bin/python tests/compat/write_table.py [--out docs/upstream-compat.md] [--only anomaly/rx]

Upstream writes tensorboard and checkpoint files relative to the working directory: everything runs in a
temporary directory, nothing lands in the repository. Needs the ``upstream`` extra (cuvis-ai) installed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "compat"))

import compat_table  # noqa: E402
import upstream_side as up  # noqa: E402
from ours_side import Ours  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "upstream-compat.md")
    parser.add_argument("--only", default="", help="only the YAMLs whose name starts with this")
    args = parser.parse_args(argv)
    try:
        from loguru import logger

        logger.remove()
    except ImportError:
        pass
    logging.disable(logging.WARNING)
    names = [up.rel_name(p) for p in up.shipped_pipelines() if up.rel_name(p).startswith(args.only)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="upstream-compat-") as tmp:
        work = Path(tmp)
        batch = up.frame_batch(7)
        with Ours(work / "ours", extra=[work / "upstream", up.pipeline_root()]) as ours:
            for name in names:
                row = compat_table.check(name, work / "upstream", ours, batch)
                rows.append(row)
                print(
                    f"{name}: upstream={row.upstream_loads} ours={row.ours_loads} runs={row.runs} "
                    f"diff={row.max_diff} {row.ours_error or row.run_error or row.upstream_error}",
                    flush=True,
                )
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    args.out.write_text(compat_table.render(rows, when), encoding="utf-8")
    up_loads = [r for r in rows if r.upstream_loads]
    print(
        f"upstream loads {len(up_loads)}/{len(rows)}; ours loads "
        f"{sum(r.ours_loads for r in up_loads)}/{len(up_loads)} of those "
        f"({sum(r.ours_loads for r in rows)}/{len(rows)} in all); ours runs "
        f"{sum(r.runs for r in up_loads)}/{len(up_loads)}; wrote {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
