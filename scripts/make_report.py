#!/usr/bin/env python
"""`make report`: one static, self-contained HTML page (plots inline, opens offline) for a results folder.

Every declared paper table with the paper's numbers beside ours, the bootstrap statistics and the commands
for missing cells; Figure 1 with CIs; learning curves; time and memory; provenance. With ``--screenshot``
also a PNG of the page's top, rendered by headless Chromium (Debian: ``apt-get install chromium``).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from framework.report import chromium, screenshot, write_report  # noqa: E402
from framework.report_data import DEFAULT_MEMORY_DIRS  # noqa: E402
from framework.stats import StatsError  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results-dir", default="results", help="folder holding runs/ (default: results)")
    parser.add_argument("--out", default=None, help="the HTML file (default: <results-dir>/report.html)")
    parser.add_argument("--memory-dir", action="append", default=None,
                        help="folder of memory CSVs, repeatable (default: results/memory and results/memory_estimates)")
    parser.add_argument("--reference", default=None,
                        help="the row the statistics compare to: a method label or its first word (default: C3A)")
    parser.add_argument("--screenshot", default=None, help="also render the page to this PNG with headless Chromium")
    args = parser.parse_args(argv)
    runs_dir = Path(args.results_dir) / "runs"
    if not runs_dir.is_dir():
        print(f"error: --results-dir {args.results_dir!r} has no runs/ folder: point it at the folder a sweep "
              "wrote (e.g. results, results/demo, results/minilm-cpu/table)", file=sys.stderr)
        return 2
    if args.screenshot and chromium() is None:
        print("error: --screenshot needs chromium on PATH (Debian: apt-get install chromium)", file=sys.stderr)
        return 2
    out = Path(args.out or Path(args.results_dir) / "report.html")
    start = time.perf_counter()
    try:
        write_report(args.results_dir, out, args.memory_dir or DEFAULT_MEMORY_DIRS, args.reference)
    except StatsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - start:.1f} s")
    if args.screenshot:
        print(f"wrote {screenshot(out, args.screenshot)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
