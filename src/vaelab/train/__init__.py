"""Training: the loop, checkpoints, the run directory."""

from vaelab.train.checkpoint import load_checkpoint, save_checkpoint
from vaelab.train.trainer import Trainer, environment, make_batches, read_records, write_run_report

__all__ = [
    "Trainer",
    "environment",
    "load_checkpoint",
    "make_batches",
    "read_records",
    "save_checkpoint",
    "write_run_report",
]
