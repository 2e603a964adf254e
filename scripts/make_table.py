#!/usr/bin/env python
"""`make table2`: render a paper table (Markdown, LaTeX, runs CSV, plot) from results/runs.

Which table is a spec in paper_tables/<name>.yaml (format: framework/paper_tables.py):
``--table table2`` (the default), another name, a path to a spec, or ``all`` for every spec with tasks.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from framework.paper_tables import SpecError, available, load_spec  # noqa: E402
from framework.stats import StatsError, check_reference  # noqa: E402
from framework.tables import run_labels  # noqa: E402
from framework.table_render import output_names, write_table  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", default="table2",
                        help=f"a spec name ({', '.join(available())}), a path to a spec .yaml, or 'all'")
    parser.add_argument("--results-dir", default="results", help="folder holding runs/ and memory/")
    parser.add_argument("--out-dir", default=None, help="where to write (default: <results-dir>/tables)")
    parser.add_argument("--protocol", default=None, help="only runs of this split protocol (holdout, dev_half, dev)")
    parser.add_argument("--reference", default=None,
                        help="the row the statistics compare every row to: a method label or its first word "
                             "(default: each model's C3A row)")
    parser.add_argument("--no-plot", action="store_true", help="skip the plot")
    args = parser.parse_args(argv)
    try:
        specs = [load_spec(name) for name in available()] if args.table == "all" else [load_spec(args.table)]
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    specs = [s for s in specs if s.tasks]  # parameter-only specs have no table to render
    if not specs:
        print(f"error: {args.table!r} declares no tasks: nothing to render (make params checks it)", file=sys.stderr)
        return 2
    try:
        check_reference(run_labels(args.results_dir), args.reference)
    except StatsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out_dir = args.out_dir or str(Path(args.results_dir) / "tables")
    for spec in specs:
        markdown = write_table(spec, args.results_dir, out_dir, protocol=args.protocol, plot=not args.no_plot,
                               reference=args.reference)
        if markdown is None:
            which = f" with protocol {args.protocol}" if args.protocol else ""
            print(f"{spec.title}: no completed runs of its tasks found under {Path(args.results_dir) / 'runs'}"
                  f"{which}; train first (e.g. `python run.py -m task=rte seed=0,1,2,3,4`), then rerun.")
            continue
        print(markdown)
        print(f"wrote {', '.join(str(Path(out_dir) / n) for n in output_names(spec, not args.no_plot))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
