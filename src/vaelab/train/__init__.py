"""Training: the loop, checkpoints, the run directory."""

from vaelab.train.checkpoint import load_checkpoint, save_checkpoint
from vaelab.train.trainer import Trainer, environment, write_run_report

__all__ = ["Trainer", "environment", "load_checkpoint", "save_checkpoint", "write_run_report"]
