"""Summarise padding-comparison runs: results.md, results.csv and PNG figures from every metrics.jsonl under a root,
beside NVIDIA's published 5-run table, with Welch and paired (by seed) t-tests against zero padding.

    python -m scripts.padding_report --root results/padding

Reads any train.py run directory below the root (the benchmark's <root>/<arch>/<padding>/run<k>/ layout or runs
made by hand). Exit codes: 0 report written (skipped malformed lines are listed on stderr and in results.md),
2 unusable results root or bad arguments.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:
    # Run by path (python or torchrun with the file's path): run again, in this same process, as `python -m` with
    # this checkout on PYTHONPATH (child processes such as DataLoader workers inherit it), before anything is imported.
    import os
    import sys

    _CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [_CHECKOUT, os.environ.get("PYTHONPATH")]))
    _ORIG = getattr(sys, "orig_argv", sys.argv)  # Python >= 3.10; 3.9 keeps no interpreter options
    _FLAGS = _ORIG[1 : len(_ORIG) - len(sys.argv)]  # the interpreter's own options (-u, -X ...), kept
    os.execv(sys.executable, [sys.executable, *_FLAGS, "-m", "scripts.padding_report", *sys.argv[1:]])

import argparse
import sys
from pathlib import Path

from partialconv.analysis import ReportError, write_report
from partialconv.engine.cli import EXIT_USER_ERROR


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,  # a prefix of a flag is an error, never another flag
        prog="python -m scripts.padding_report",
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
