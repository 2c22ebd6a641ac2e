"""Run directories: their layout, metrics log and the one-writer lock (see :mod:`vaelab.runs.rundir`)."""

from vaelab.runs.rundir import CHECKPOINT, RunDir, parse_records, remove_stale_temp_files

__all__ = ["CHECKPOINT", "RunDir", "parse_records", "remove_stale_temp_files"]
