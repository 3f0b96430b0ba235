"""The names of the files in a run directory: the training programs write them, the padding report reads them.

A module of its own at the bottom of the package, so that the writer (engine/) and the reader (analysis/) share one
spelling without either importing the other.
"""

from __future__ import annotations

__all__ = ["CONFIG_FILE", "ENVIRONMENT_FILE", "LOG_FILE", "METRICS_FILE", "REPLACED_PREFIX"]

METRICS_FILE = "metrics.jsonl"  # one JSON record per finished epoch (train_inpainting.py: per logged iteration)
CONFIG_FILE = "config.yaml"  # the resolved flags, in the form --config accepts back
ENVIRONMENT_FILE = "environment.yaml"  # the software and devices of the run, for the report's "what was run"
LOG_FILE = "log.txt"  # the run's log lines, timestamped
REPLACED_PREFIX = "replaced-"  # where --overwrite moves an earlier run aside; the report skips such folders
