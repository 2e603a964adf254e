#!/usr/bin/env python
"""`make table2`: render Table 2 (Markdown, LaTeX, runs CSV, Figure-1-like plot) from results/runs."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from c3a.table_render import write_table2  # noqa: E402
from c3a.tables import DEFAULT_PAPER_CSV  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results-dir", default="results", help="folder holding runs/ and memory/")
    parser.add_argument("--out-dir", default=None, help="where to write (default: <results-dir>/tables)")
    parser.add_argument("--protocol", default=None, help="only runs of this split protocol (holdout, dev_half, dev)")
    parser.add_argument("--paper-csv", default=str(DEFAULT_PAPER_CSV), help="the paper's Table 2 numbers")
    parser.add_argument("--no-plot", action="store_true", help="skip figure1.png")
    args = parser.parse_args(argv)
    out_dir = args.out_dir or str(Path(args.results_dir) / "tables")
    markdown = write_table2(args.results_dir, out_dir, protocol=args.protocol, plot=not args.no_plot,
                            paper_csv=args.paper_csv)
    if markdown is None:
        which = f" with protocol {args.protocol}" if args.protocol else ""
        print(f"no completed runs found under {Path(args.results_dir) / 'runs'}{which}; "
              "train first (e.g. `python run.py -m task=rte seed=0,1,2,3,4`), then rerun `make table2`.")
        return 0
    print(markdown)
    print(f"wrote {out_dir}/table2.md, table2.tex, runs.csv" + ("" if args.no_plot else ", figure1.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
