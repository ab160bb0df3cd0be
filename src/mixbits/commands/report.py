"""``mixbits report``: Markdown and a self-contained HTML page, with plots, for a finished run."""

from __future__ import annotations

import argparse

NAME = "report"
HELP = "write report.md (plots in plots/) and a self-contained report.html for a run folder"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_folder", metavar="RUN_FOLDER", help="the folder of a finished mixbits search")
    p.add_argument("--sweep", metavar="PATH", help="sweep.json or sweep.csv of a mixbits sweep: adds the Pareto plot")
    p.add_argument("--out", help="where to write the report (default: the run folder)")


def run(args: argparse.Namespace) -> int:
    from ..report_html import write_run_report

    paths = write_run_report(args.run_folder, sweep=args.sweep, out=args.out)
    print(f"wrote {paths['html']} and {paths['markdown']}")
    return 0
