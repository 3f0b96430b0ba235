"""Summarise padding-comparison runs: results.md, results.csv and PNG figures from every metrics.jsonl under a root,
beside NVIDIA's published 5-run table, with Welch and paired (by seed) t-tests against zero padding.

    python -m scripts.padding_report --root results/padding

Reads any train.py run directory below the root (the benchmark's <root>/<arch>/<padding>/run<k>/ layout or runs
made by hand). Exit codes: 0 report written (skipped malformed lines are listed on stderr and in results.md),
2 unusable results root or bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from partialconv.analysis import ReportError, write_report
from partialconv.engine.cli import EXIT_USER_ERROR, command_name


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,  # a prefix of a flag is an error, never another flag
        prog=command_name("python -m scripts.padding_report"),
        description="Tables (markdown, CSV) and figures comparing paddings over multiple train.py runs.",
    )
    parser.add_argument(
        "--root", required=True, type=Path, help="results root (required): searched at any depth for metrics.jsonl"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="directory for results.md/results.csv/PNGs (default: the results root)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        files = write_report(args.root, args.out)
    except ReportError as e:
        print(f"padding_report: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    for problem in files.problems:
        print(f"padding_report: warning: skipped {problem}", file=sys.stderr)
    for note in files.warnings:
        print(f"padding_report: warning: {note}", file=sys.stderr)
    print(f"wrote {files.markdown}, {files.csv}" + "".join(f", {f}" for f in files.figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
