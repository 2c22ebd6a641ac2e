"""The training loop, and the run directory it writes.

A run directory holds (DESIGN.md): ``config.toml`` (fully resolved), ``model.safetensors`` +
``model.json``, ``checkpoint/last.safetensors`` (for resume), ``metrics.jsonl``, TensorBoard
``events.*``, ``figures/*.png`` and ``report.md``.

Determinism: one seed drives weight initialisation, the reparameterisation noise (torch's global
RNG) and the data order and dynamic binarisation (a separate generator). Both RNG states go into
every end-of-epoch checkpoint, so an interrupted run resumed from its last checkpoint replays the
remaining epochs exactly as an uninterrupted run would (same thread count assumed); so does what the objective
keeps between steps (``Objective.state_dict``: beta-TCVAE's remembered posteriors).

Snapshots (``train.snapshot_minutes`` > 0): each time the training clock (the one ``train.minutes`` counts:
the epochs' training seconds, a resumed epoch's included) passes a multiple of the interval, after an optimiser
step or at an epoch's end, the weights the run would save go to ``snapshots/`` (:mod:`vaelab.runs.snapshots`).
A resume first removes the snapshots taken after its checkpoint, then takes them again as the clock passes
their marks, so an interrupted run has each mark once.

Weight averaging (``train.ema_decay`` > 0): an exponential moving average of the weights,
updated after every optimiser step (``torch.optim.swa_utils.AveragedModel``), is what the run
evaluates, saves and draws its figures with; the optimiser keeps training the raw weights. Both are
in the checkpoint, so a resumed run continues the same average.

Stages (``model.stages()``): a family trained in stages (vqvae: its autoencoder, then a prior over its
codes) gets ``train.epochs`` epochs of its first stage and each later stage's own epochs after them,
numbered on (epochs 1..E of the first, E+1.. of the next). Before a stage's first epoch the trainer
calls ``model.enter_stage(i)``, which freezes what the stage does not train, and starts a fresh Adam over
the parameters still requiring a gradient, its learning-rate schedule running over the stage's epochs.
Checkpoints say their stage, and a resume enters it before restoring the optimiser's state, so a run
interrupted on either side of the boundary resumes exactly.

Data-parallel training (``torchrun --nproc-per-node N -m vaelab train ...``) is described in
``vaelab.train.distributed``: N processes compute the single-process update of each global batch,
and only rank 0 writes the run directory.
"""

from __future__ import annotations

import math
import platform
import time
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

import vaelab
from vaelab.allocator import retain_freed_memory
from vaelab.config import MODEL_KEYS, RunConfig, objective_keys
from vaelab.data import Batches, ImageDataset, load_dataset, to_unit_float
from vaelab.errors import VaelabError
from vaelab.eval.bound import evaluate_elbo, evaluation_seed
from vaelab.io import REASONS, atomic_write, atomic_write_text, cannot_write, markdown_figure, os_errno
from vaelab.model import Shard, build_model, build_objective, save_model
from vaelab.runs import RunDir
from vaelab.runs.rundir import CONFIG
from vaelab.runs.snapshots import Snapshot, list_snapshots, mark_name, save_snapshot, snapshot_index
from vaelab.train.adam import make_adam
from vaelab.train.checkpoint import checkpoint_info, load_checkpoint, save_checkpoint
from vaelab.train.distributed import init_world, launched_rank
from vaelab.train.divergence import stop_if_diverged
from vaelab.train.precision import network_dtype
from vaelab.train.schedule import learning_rate
from vaelab.train.step import TrainStep

CHECKPOINT = Path("checkpoint") / "last.safetensors"
BEST = Path("checkpoint") / "best.safetensors"  # train.keep_best: the weights of the best validation epoch so far
TENSORBOARD_RECONSTRUCTIONS = 8  # validation images shown with their reconstructions each epoch
TENSORBOARD_SAMPLES = 64
PLAIN_PROGRESS_SECONDS = 30.0  # without a terminal (no bar), a progress line inside an epoch this often
PROGRESS_SECONDS = 1.0  # the bar's loss at least this often (and every 25 steps) when steps are slow


def environment() -> dict[str, str]:
    return {
        "vaelab": vaelab.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "threads": str(torch.get_num_threads()),
    }


def run_dataset(config: RunConfig) -> ImageDataset:
    """The data set of a run of ``config``, read under its memory-mapping policy."""
    mmap = {"auto": None, "always": True, "never": False}[config.data.mmap]
    return load_dataset(config.data.name, config.data.data_dir or None, mmap=mmap)


def make_batches(config: RunConfig) -> tuple[ImageDataset, dict[str, Batches | None]]:
    """The data set and its train / validation / test batches, exactly as a run of ``config`` uses them."""
    dataset = run_dataset(config)
    sizes = (config.data.validation_size, config.data.train_limit, config.data.test_limit)
    splits, factors = dataset.splits(*sizes), dataset.factor_splits(*sizes)
    if config.data.train_with_test:  # the training split, then the test images (as Keras' example concatenates)
        splits["train"] = tuple(torch.cat(pair) for pair in zip(splits["train"], splits["test"], strict=True))
        if factors["train"] is not None:
            factors["train"] = torch.cat([factors["train"], factors["test"]])
    binarize, train = config.data.binarize, config.train
    batches: dict[str, Batches | None] = {
        "train": Batches(*splits["train"], train.batch_size, binarize, training=True, factors=factors["train"]),
        "validation": (
            Batches(
                *splits["validation"], train.eval_batch_size, binarize, training=False, factors=factors["validation"]
            )
            if config.data.validation_size
            else None
        ),
        "test": Batches(*splits["test"], train.eval_batch_size, binarize, training=False, factors=factors["test"]),
    }
    return dataset, batches


def read_records(run_dir: Path) -> list[dict[str, Any]]:
    """The records of a run's ``metrics.jsonl`` (empty if it has none yet)."""
    return RunDir(run_dir).records()


class Trainer:
    """Trains one run. ``Trainer(config, run_dir).fit()``, or ``Trainer.resume(run_dir).fit()``."""

    def __init__(
        self,
        config: RunConfig,
        run_dir: Path,
        console: Console | None = None,
        figures: bool = True,
        figure_format: Any = None,
    ):
        self.config = config.validate()
        self.run_dir = Path(run_dir)
        self.console = console or Console(stderr=True, soft_wrap=True)
        self.figures = figures
        self.figure_format = figure_format  # a vaelab.viz.FigureFormat; None: PNG at the default dpi
        network_dtype(config.train.precision, torch.device(config.train.device).type)  # refuse before any work
        retain_freed_memory()  # reuse freed activations instead of faulting in fresh pages every step
        train = config.train
        if train.threads:
            torch.set_num_threads(train.threads)
        torch.manual_seed(train.seed)
        self.data_generator = torch.Generator().manual_seed(train.seed)

        self.dataset, batches = make_batches(config)
        self.train_batches, self.validation_batches, self.test_batches = (
            batches["train"],
            batches["validation"],
            batches["test"],
        )
        if train.device.startswith("cuda") and not torch.cuda.is_available():
            raise VaelabError("train.device is cuda but this torch build sees no CUDA device; use train.device=cpu")
        self.world, device = init_world(train.device)  # one process unless started by torchrun
        if self.world.distributed and train.minutes > 0:
            raise VaelabError("train.minutes is not supported with data-parallel training (each process times itself)")
        if self.world.distributed and train.snapshot_minutes > 0:
            raise VaelabError(
                "train.snapshot_minutes is not supported with data-parallel training (each process times itself)"
            )
        if self.world.distributed and train.keras_log:
            raise VaelabError(
                "train.keras_log is not supported with data-parallel training (each process sees a shard)"
            )
        if self.world.distributed and config.model.batch_norm:
            raise VaelabError(
                "model.batch_norm is not supported with data-parallel training (each process would normalise "
                "over its own shard, not the batch)"
            )
        if self.world.distributed and config.objective.free_bits > 0:
            raise VaelabError(
                "objective.free_bits is not supported with data-parallel training (its budget is a whole-batch mean)"
            )
        self.device = torch.device(device)
        examples_per_step = min(train.batch_size, len(self.train_batches.images)) * config.objective.k
        self.model = build_model(config.model, self.dataset.image_shape, batch=examples_per_step)
        if config.model.decoder_bias == "data-mean":
            self.model.init_output_bias(self.train_batches.mean_image())
        self.model.to(self.device)
        self.world.broadcast_parameters(self.model)
        self.objective = build_objective(config.objective)
        self.objective.check_model(self.model)  # a model the objective cannot train is refused before any work
        # objective.elbo_share: the bound the first share of the training optimises
        self.elbo_objective = (
            build_objective(replace(config.objective, name="elbo", k=1, gradient="reparam", elbo_share=0.0))
            if config.objective.elbo_share > 0
            else None
        )
        self.stages = self.model.stages()
        staged_refusals = {"train.minutes": train.minutes > 0, "train.early_stopping": train.early_stopping > 0}
        staged_refusals["train.keep_best"] = train.keep_best
        staged_refusals["train.snapshot_minutes"] = train.snapshot_minutes > 0
        for key in [k for k, on in staged_refusals.items() if on and len(self.stages) > 1]:
            raise VaelabError(
                f"{key} is not supported for a model trained in stages ({', '.join(s.name for s in self.stages)}): "
                "set the epochs of each instead"
            )
        self.averaged = (
            AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(train.ema_decay), use_buffers=True)
            if train.ema_decay > 0
            else None
        )
        self.enter_stage(0)
        self.epoch = 0  # epochs completed
        self.figure_paths: list[Path] = []  # what finish() drew
        self._say_progress = False  # set by fit(): lines on the console as the run goes
        # mid-epoch: (next step, loss sums, images, the extra terms' sums, the epoch's training seconds so far)
        self._resume_point: tuple[int, list[float], int, dict[str, float], float] | None = None
        self._next_snapshot = 1  # the index of the next snapshot mark (train.snapshot_minutes)

    # --- stages ----------------------------------------------------------------------------------

    @property
    def total_epochs(self) -> int:
        """The epochs of every stage: train.epochs for the first, each later stage's own."""
        return self.config.train.epochs + sum(stage.epochs or 0 for stage in self.stages[1:])

    def stage_span(self, index: int) -> tuple[int, int]:
        """(epochs before stage ``index``, its epochs)."""
        lengths = [self.config.train.epochs] + [stage.epochs or 0 for stage in self.stages[1:]]
        return sum(lengths[:index]), lengths[index]

    def stage_of(self, epoch_index: int) -> int:
        """The stage that trains the epoch ``epoch_index`` (0-based)."""
        for index in range(len(self.stages)):
            start, length = self.stage_span(index)
            if epoch_index < start + length:
                return index
        return len(self.stages) - 1

    def enter_stage(self, index: int) -> None:
        """The model (and its moving average) made ready for stage ``index``, and a fresh optimiser over
        what that stage trains."""
        self.model.enter_stage(index)
        if self.averaged is not None:
            self.averaged.module.enter_stage(index)
        self.stage = index
        train = self.config.train
        # a family's parameter groups may set their own Adam settings (factorvae's discriminator: its betas);
        # a stage trains the parameters its model still requires a gradient for
        groups = [
            {**group, "params": [p for p in group["params"] if p.requires_grad]}
            for group in self.model.parameter_groups()
        ]
        self.optimizer = make_adam(
            [g for g in groups if g["params"]], train.lr, train.adam_eps, train.adam_eps_placement
        )
        self.step, self.elbo_step = (
            None
            if objective is None
            else TrainStep(
                self.model,
                objective,
                self.optimizer,
                train.precision,
                self.device.type,
                world=self.world,
                compile=train.compile,
                dataset_size=len(self.train_batches.images),
            )
            for objective in (self.objective, self.elbo_objective)
        )

    def _stage_fields(self) -> dict[str, Any]:
        """What a record or checkpoint of a model trained in stages says about the stage (nothing otherwise)."""
        return {"stage": self.stages[self.stage].name} if len(self.stages) > 1 else {}

    @property
    def final_model(self) -> torch.nn.Module:
        """The weights the run evaluates and saves: their moving average if the run keeps one."""
        return self.model if self.averaged is None else self.averaged.module

    # --- run directory ---------------------------------------------------------------------------

    _lock: ExitStack | None = None  # the run's writer lock, held from resume() until fit() returns

    @property
    def run(self) -> RunDir:
        return RunDir(self.run_dir)

    @classmethod
    def resume(
        cls, run_dir: Path, console: Console | None = None, figures: bool = True, figure_format: Any = None
    ) -> Trainer:
        """The trainer of an interrupted (or finished, to extend) run; it holds the run's writer lock."""
        run = RunDir(run_dir)
        if not run.own(CONFIG).is_file():
            raise VaelabError(f"{run_dir} is not a vaelab run directory (no config.toml); nothing to resume")
        lock = ExitStack()
        try:
            if launched_rank() == 0:  # only rank 0 writes the run
                lock.enter_context(run.writing())
            trainer = cls(
                RunConfig.load(run.config), run.path, console=console, figures=figures, figure_format=figure_format
            )
            trainer.enter_stage(trainer._checkpoint_stage(checkpoint_info(run.own(CHECKPOINT))))
            rng, info = load_checkpoint(
                run.own(CHECKPOINT), trainer.model, trainer.optimizer, trainer.averaged, trainer.objective
            )
            torch.set_rng_state(rng["torch"])
            trainer.data_generator.set_state(rng["data"])
            if "cuda" in rng:
                torch.cuda.set_rng_state(rng["cuda"], trainer.device)
            trainer.epoch = int(info["epoch"])
            trainer._restore_resume_point(info)
            if trainer.world.is_main:
                trainer._truncate_metrics(trainer.epoch)
        except BaseException:
            lock.close()
            raise
        trainer._lock = lock
        return trainer

    def _checkpoint_stage(self, info: dict[str, Any]) -> int:
        """The stage a checkpoint was written in (its optimiser holds that stage's parameters)."""
        name = info.get("stage", self.stages[0].name)
        names = [stage.name for stage in self.stages]
        if name not in names:
            raise VaelabError(
                f"{self.run_dir / CHECKPOINT} says it was written in stage {name!r}; this model trains in "
                f"{', '.join(names)}: the checkpoint was edited or belongs to another run"
            )
        return names.index(name)

    def _truncate_metrics(self, epoch: int) -> None:
        """Drop records written after the checkpoint, so a resumed run's log has no duplicates.

        The test record goes (the model will change); ``eval``'s analysis records stay: each names the
        ``epochs_trained`` of the model it describes.
        """
        self.run.keep_records(lambda r: r["epoch"] <= epoch and (r["split"] != "test" or r.get("kind") == "analysis"))

    def _log(self, record: dict[str, Any]) -> None:
        self.run.append(record)

    def records(self) -> list[dict[str, Any]]:
        return self.run.records()

    # --- training --------------------------------------------------------------------------------

    def train_seconds(self) -> float:
        """Training time so far, over every session of this run (what a time budget counts)."""
        return sum(self._train_record_seconds())

    def _train_record_seconds(self) -> list[float]:
        return [r.get("seconds", 0.0) for r in self.records() if r["split"] == "train"]

    def budget_spent(self) -> bool:
        """Whether the training time so far has used up ``train.minutes``."""
        minutes = self.config.train.minutes
        return minutes > 0 and self.train_seconds() >= 60 * minutes

    def best_validation(self) -> tuple[int, float] | None:
        """(epoch, validation total) of the best epoch so far: the first whose total is lower than every
        earlier best by more than ``train.early_stopping_delta``; None before any validation."""
        delta, best = self.config.train.early_stopping_delta, None
        for record in self.records():
            better = best is None or record["total"] < best[1] - delta
            if record["split"] == "validation" and "kind" not in record and better:
                best = (int(record["epoch"]), float(record["total"]))
        return best

    def early_stop_due(self) -> bool:
        """Whether ``train.early_stopping`` epochs have passed without a better validation total."""
        patience = self.config.train.early_stopping
        best = self.best_validation() if patience > 0 else None
        return best is not None and self.epoch - best[0] >= patience

    def _elbo_phase(self, spent_seconds: float) -> bool:
        """Whether the epoch that starts now lies in objective.elbo_share's first share of the training."""
        share, minutes = self.config.objective.elbo_share, self.config.train.minutes
        if minutes > 0:
            return spent_seconds < share * 60 * minutes
        return self.epoch < share * self.total_epochs

    def _kl_weight(self, epoch_fraction: float) -> float:
        warmup = self.config.objective.kl_warmup_epochs
        return 1.0 if warmup == 0 else min(1.0, epoch_fraction / warmup)

    def train_epoch(self, progress: Progress | None = None, task=None) -> dict[str, float]:
        self.model.train()
        train = self.config.train
        # a time budget: its schedule moves on step by step, and it ends training inside an epoch too
        budget = 60 * train.minutes if train.minutes > 0 else 0.0
        snapshots = train.snapshot_minutes > 0
        spent_before = self.train_seconds() if budget or snapshots else 0.0
        if budget:  # the schedule over the time budget: where in it this epoch starts
            lr = learning_rate(train.lr_schedule, train.lr, spent_before, budget)
        else:  # over the stage's epochs (one stage: train.epochs)
            start, length = self.stage_span(self.stage)
            lr = learning_rate(train.lr_schedule, train.lr, self.epoch - start, length)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        on_elbo = self.elbo_step is not None and self._elbo_phase(spent_before)
        train_step = self.elbo_step if on_elbo else self.step
        steps = len(self.train_batches)
        world = self.world
        sizes = self.train_batches.batch_sizes()
        # seconds_before: a resumed epoch's training time up to its checkpoint, where its clock goes on from
        first_step, sums, count, extra, seconds_before = self._resume_point or (0, [0.0] * self._sums_size, 0, {}, 0.0)
        self._resume_point = None
        if snapshots:  # every mark the clock has passed was taken before this point
            self._next_snapshot = snapshot_index(spent_before + seconds_before, train.snapshot_minutes) + 1
        sums = torch.tensor(sums, dtype=torch.float64, device=self.device)
        # the family's extra terms (per example), summed as the loss is
        extra_sums = {
            name: torch.tensor(value, dtype=torch.float64, device=self.device) for name, value in extra.items()
        }
        count_before, start = count, time.perf_counter()
        last_checkpoint = last_line = last_progress = start
        plain_lines = self._say_progress and progress is not None and progress.disable  # no bar: lines instead
        epoch_data_state = self.data_generator.get_state()  # a mid-epoch resume replays the epoch's order from it
        batches = self.train_batches.batches(self.data_generator, rows=world.rows if world.distributed else None)
        for step, batch in enumerate(batches):
            if step < first_step:
                continue  # drawn again only so the order and the binarisation noise replay exactly
            x = batch.x.to(self.device, non_blocking=True)
            labels = None if batch.y is None else batch.y.to(self.device, non_blocking=True)
            shard = Shard(*world.rows(sizes[step]), sizes[step]) if world.distributed else None
            terms = train_step(
                x,
                kl_weight=self._kl_weight(self.epoch + step / steps),
                shard=shard,
                labels=labels,
                step=self.epoch * steps + step,
            )
            if self.averaged is not None:
                self.averaged.update_parameters(self.model)
            # summing detached tensors keeps the loop free of a host sync per step
            parts = (terms.total.detach(), terms.reconstruction.detach(), terms.kl.detach())
            sums[:3] += torch.stack([p.sum() for p in parts]).double()
            if train.keras_log:  # Keras' Mean trackers: the batch means' running mean; its progress bar's loss
                sums[3:6] += torch.stack([p.mean() for p in parts]).double()  # the mean of those running means
                sums[6] += sums[3] / (step + 1)
            for name, value in terms.extra.items():
                extra_sums[name] = extra_sums.get(name, 0.0) + value.detach().sum().double()
            count += len(x)
            # every 25 steps (reading the loss syncs a GPU), and at least once a second when steps are slow
            slow = time.perf_counter() - last_progress >= PROGRESS_SECONDS
            if progress is not None and (step % 25 == 0 or step == steps - 1 or slow):
                last_progress = time.perf_counter()
                loss = sums[0].item() / count
                if not math.isfinite(loss):
                    self._stop_if_diverged([{"split": "train", "total": loss}], epoch=self.epoch + 1)
                progress.update(task, completed=step + 1, loss=f"{loss:8.2f}")
                if plain_lines and time.perf_counter() - last_line >= PLAIN_PROGRESS_SECONDS:
                    last_line = time.perf_counter()
                    self.console.print(
                        f"epoch {self.epoch + 1}/{self.total_epochs}: {step + 1}/{steps} batches, train loss {loss:.2f} "
                        f"[{last_line - start:.0f} s]",
                        markup=False,
                    )
            now = seconds_before + (time.perf_counter() - start)  # this epoch's training seconds so far
            if snapshots:
                self._snapshot_if_due(spent_before + now, step + 1)
            if budget:
                spent = spent_before + now
                if spent >= budget:
                    break
                for group in self.optimizer.param_groups:
                    group["lr"] = learning_rate(train.lr_schedule, train.lr, spent, budget)
            if self._mid_epoch_checkpoint_due(last_checkpoint) and step < steps - 1:
                self._save_mid_epoch(step + 1, sums, count, epoch_data_state, extra_sums, now)
                last_checkpoint = time.perf_counter()
        names = sorted(extra_sums)
        extra_sum = torch.stack([extra_sums[n] for n in names]) if names else sums.new_zeros(0)
        if world.distributed:  # the whole global batch's sums, the same on every process
            world.all_reduce_sum(sums)
            if names:
                world.all_reduce_sum(extra_sum)
            count = int(world.all_reduce_sum(torch.tensor([count], dtype=torch.float64, device=self.device)).item())
        total, reconstruction, kl = (sums[:3] / count).tolist()  # syncs the device before the clock stops
        extra_means = dict(zip(names, (extra_sum / count).tolist()))
        seconds = seconds_before + (time.perf_counter() - start)
        if not math.isfinite(total):
            self._stop_if_diverged([{"split": "train", "total": total}], epoch=self.epoch + 1)
        if snapshots:  # the clock as the next epoch reads it from the records: the sum with this epoch's seconds
            self._snapshot_if_due(sum([*self._train_record_seconds(), seconds]), step + 1)
        metrics = {
            "total": total,
            "reconstruction": reconstruction,
            "kl": kl,
            "seconds": seconds,
            "images_per_second": (count - count_before) / (seconds - seconds_before),  # this session's
            "lr": lr,
            **extra_means,
        }
        if self.elbo_step is not None:  # which bound this epoch optimised
            metrics["bound"] = "elbo" if on_elbo else self.config.objective.name
        if step + 1 < steps:  # train.minutes ran out inside the epoch: how much of it the weights saw
            metrics["fraction_trained"] = (step + 1) / steps
        if train.keras_log:
            keras = (sums[3:6] / steps).tolist()
            metrics.update(
                {
                    "keras_reconstruction_loss": keras[1],  # its log's reconstruction_loss and kl_loss columns
                    "keras_kl_loss": keras[2],
                    "keras_total": keras[0],  # their sum: the loss its train_step computes, as a running mean
                    # the log's loss column: Keras 2's progress bar averages the running means, its epoch-end
                    # update adding the last one once more
                    "keras_progbar_loss": (sums[6].item() + keras[0]) / (steps + 1),
                }
            )
        return metrics

    def _mid_epoch_checkpoint_due(self, last: float) -> bool:
        # single-process only: the partial sums of other processes are not in rank 0's hands
        minutes = self.config.train.checkpoint_minutes
        return minutes > 0 and not self.world.distributed and time.perf_counter() - last >= 60 * minutes

    def _save_mid_epoch(
        self,
        next_step: int,
        sums: torch.Tensor,
        count: int,
        epoch_data_state: torch.Tensor,
        extra_sums: dict[str, torch.Tensor] | None = None,
        seconds: float = 0.0,
    ) -> None:
        """A checkpoint inside an epoch: an interrupted slow epoch loses minutes, not the epoch. ``seconds``: the
        epoch's training time so far, where a resumed epoch's clock goes on from."""
        sums_list = sums.tolist()
        extra = {name: float(value) for name, value in (extra_sums or {}).items()}
        if not all(math.isfinite(v) for v in sums_list):
            return  # never checkpoint a diverged state; the end of the epoch reports it
        self._stop_if_diverged([], epoch=self.epoch + 1)  # finite loss, but the weights or Adam's state may not be
        save_checkpoint(
            self.run_dir / CHECKPOINT,
            self.model,
            self.optimizer,
            {**self._rng_states(), "data": epoch_data_state},
            {
                "epoch": self.epoch,
                "step": next_step,
                "sums": sums_list,
                "count": count,
                "seconds": seconds,
                **({"extra_sums": extra} if extra else {}),
                **self._stage_fields(),
            },
            self.averaged,
            self.objective.state_dict(),
        )

    def _snapshot_if_due(self, training_seconds: float, steps_done: int) -> None:
        """Save the weights the run would save as the snapshot of the last mark ``training_seconds`` has passed,
        if no snapshot has that mark yet (``steps_done``: of the epoch in progress)."""
        every = self.config.train.snapshot_minutes
        index = snapshot_index(training_seconds, every)
        if index < self._next_snapshot:
            return
        self._next_snapshot = index + 1
        name, mark = mark_name(index, every)
        path = self.run.snapshots / f"{name}.safetensors"
        if path.exists():  # taken before this run's checkpoint (train.snapshot_minutes changed since): kept
            return
        self._stop_if_diverged([], epoch=self.epoch + 1)  # no snapshot of non-finite weights
        snapshot = Snapshot(
            path,
            training_seconds,
            mark,
            self.epoch + 1,
            steps_done,
            len(self.train_batches),
            "raw" if self.averaged is None else "ema",
        )
        save_snapshot(snapshot, self.final_model.state_dict())
        self._say(
            f"snapshot {name}: {training_seconds / 60:.2f} training minutes, epoch {snapshot.epoch} step "
            f"{steps_done}/{snapshot.steps_per_epoch}"
        )

    def _drop_snapshots_after_checkpoint(self) -> None:
        """Remove the snapshots taken after the point training goes on from (all of them for a fresh start):
        the run takes them again as its clock passes their marks."""
        if not self.run.own("snapshots").is_dir():
            return
        point = (self.epoch + 1, self._resume_point[0]) if self._resume_point else (self.epoch, math.inf)
        for snapshot in list_snapshots(self.run):
            if (snapshot.epoch, snapshot.step) > point:
                snapshot.path.unlink()

    @property
    def position(self) -> str:
        """Where training stands: after which epoch, and step where a mid-epoch checkpoint left it."""
        step = f", step {self._resume_point[0]} of epoch {self.epoch + 1}" if self._resume_point else ""
        return f"after epoch {self.epoch}{step}"

    @property
    def _sums_size(self) -> int:
        """What an epoch sums as it goes: total, reconstruction, KL; with train.keras_log four more."""
        return 7 if self.config.train.keras_log else 3

    def _restore_resume_point(self, info: dict[str, Any]) -> None:
        """Where a mid-epoch checkpoint left the current epoch (nothing for an end-of-epoch one)."""
        if "step" not in info:
            return
        step, sums, count = info.get("step"), info.get("sums"), info.get("count")
        extra = info.get("extra_sums", {})
        seconds = info.get("seconds", 0.0)  # a checkpoint from before the clock went on across a resume: none
        valid = (
            type(step) is int
            and 0 < step < len(self.train_batches)
            and type(count) is int
            and count > 0
            and isinstance(sums, list)
            and len(sums) == self._sums_size
            and all(type(v) in (int, float) and math.isfinite(v) for v in sums)
            and isinstance(extra, dict)
            and all(type(v) in (int, float) and math.isfinite(v) for v in extra.values())
            and type(seconds) in (int, float)
            and 0 <= seconds < math.inf
        )
        if not valid:
            raise VaelabError(
                f"{self.run_dir / CHECKPOINT}: its mid-epoch position (step {step!r}, count {count!r}, "
                f"seconds {seconds!r}) does not fit "
                f"this run's {len(self.train_batches)} steps per epoch; the checkpoint was edited or belongs elsewhere"
            )
        if self.world.distributed:
            raise VaelabError(f"{self.run_dir} stopped inside an epoch: resume it in one process, not under torchrun")
        self._resume_point = (
            step,
            [float(v) for v in sums],
            count,
            {str(k): float(v) for k, v in extra.items()},
            float(seconds),
        )

    def evaluate(self, batches: Batches) -> dict[str, Any]:
        return evaluate_elbo(self.final_model, batches, seed=evaluation_seed(self.config.train.seed))

    def fit(self, progress: bool = True) -> dict[str, Any]:
        """Train the remaining epochs, then write the model, test metrics, figures and report.

        Rank 0 holds the run's writer lock throughout (making the directory if needed; a run that
        fails before its first checkpoint leaves no directory it made). A write the disk refuses
        ends in a :class:`VaelabError` naming the file; the last checkpoint stays whole.
        """
        main = self.world.is_main  # only rank 0 writes the run directory
        self._say_progress = progress and main
        if self.epoch > self.total_epochs:
            raise VaelabError(
                f"{self.run_dir}: its checkpoint says {self.epoch} epochs were trained, more than the run's "
                f"{self.total_epochs} (train.epochs = {self.config.train.epochs}"
                + "".join(f", {s.name}: {s.epochs}" for s in self.stages[1:])
                + "); the checkpoint was edited or belongs to another run"
            )
        with ExitStack() as lock:
            if self._lock is not None:  # taken by resume()
                lock.enter_context(self._lock)
                self._lock = None
            if main:
                lock.enter_context(self.run.writing(create=True))
            try:
                return self._train_and_finish(progress, main)
            except OSError as err:  # from TensorBoard's writer; atomic writes raise VaelabError themselves
                if os_errno(err) not in REASONS:
                    raise
                raise cannot_write(err.filename or f"a file in {self.run_dir}", err) from None

    def _train_and_finish(self, progress: bool, main: bool) -> dict[str, Any]:
        from torch.utils.tensorboard import SummaryWriter  # slow import: only when training

        if main and self.epoch == 0:
            self.run.metrics.unlink(missing_ok=True)
            self.config.save(self.run.config)
        if main:
            self._drop_snapshots_after_checkpoint()
        epochs = self.total_epochs
        try:
            writer = (
                SummaryWriter(log_dir=str(self.run_dir), purge_step=self.epoch + 1 if self.epoch else None)
                if main
                else None
            )
        except (OSError, UnicodeError) as err:
            raise cannot_write(self.run_dir, err, "write TensorBoard events into") from None
        if writer is not None and self.epoch == 0:
            self._log_hyperparameters(writer)
        columns = [
            TextColumn("[bold]epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
        ]
        show_bar = progress and self.console.is_terminal and main
        try:
            with Progress(*columns, console=self.console, disable=not show_bar, transient=True) as bar:
                while self.epoch < epochs and not self.budget_spent() and not self.early_stop_due():
                    if self.stage_of(self.epoch) != self.stage:  # the next stage's first epoch
                        self.enter_stage(self.stage_of(self.epoch))
                    task = bar.add_task(
                        "train", total=len(self.train_batches), epoch=f"{self.epoch + 1}/{epochs}", loss=""
                    )
                    train_metrics = self.train_epoch(bar, task)
                    bar.remove_task(task)
                    self.epoch += 1
                    if main:
                        self._end_epoch(train_metrics, writer, progress)
        finally:
            if writer is not None:
                writer.close()
        if self.epoch < epochs and self.early_stop_due():
            epoch, total = self.best_validation()
            waited, delta = self.epoch - epoch, self.config.train.early_stopping_delta
            better = f"lower by more than {delta:g} (train.early_stopping_delta)" if delta else "lower"
            self._say(
                f"early stopping after epoch {self.epoch}: no validation total {better} than epoch {epoch}'s "
                f"{total:.2f} for {waited} epoch{'s' * (waited != 1)} "
                f"(train.early_stopping = {self.config.train.early_stopping})"
            )
        return self.finish()

    def _rng_states(self) -> dict[str, torch.Tensor]:
        states = {"torch": torch.get_rng_state(), "data": self.data_generator.get_state()}
        if self.device.type == "cuda":
            states["cuda"] = torch.cuda.get_rng_state(self.device)
        return states

    def _end_epoch(self, train_metrics: dict[str, float], writer, progress: bool) -> None:
        stage = self._stage_fields()
        records = [{"epoch": self.epoch, "split": "train", **stage, **train_metrics}]
        if self.validation_batches is not None:
            records.append(
                {"epoch": self.epoch, "split": "validation", **stage, **self.evaluate(self.validation_batches)}
            )
        self._stop_if_diverged(records)
        for record in records:
            self._log(record)
            for key, value in record.items():
                if key in ("total", "reconstruction", "kl") or key in self._extra_names(record):
                    writer.add_scalar(f"{record['split']}/{key}", value, self.epoch)
        self._log_images(writer)
        writer.flush()
        if self.config.train.keep_best and self.best_validation()[0] == self.epoch:
            self._save_best()
        save_checkpoint(
            self.run_dir / CHECKPOINT,
            self.model,
            self.optimizer,
            self._rng_states(),
            {"epoch": self.epoch, **stage},
            self.averaged,
            self.objective.state_dict(),
        )
        if progress:
            line = f"epoch {self.epoch}/{self.total_epochs}{' (' + stage['stage'] + ')' if stage else ''}"
            line += f"  train {train_metrics['total']:.2f}"
            if len(records) > 1:
                v = records[1]
                line += f"  validation {v['total']:.2f} (recon {v['reconstruction']:.2f} + KL {v['kl']:.2f})"
            line += f"  [{train_metrics['seconds']:.1f} s, {train_metrics['images_per_second']:.0f} img/s]"
            self.console.print(line)

    @staticmethod
    def _extra_names(record: dict[str, Any]) -> list[str]:
        """A record's extra terms: the family's named numbers beside the standard ones."""
        standard = {"epoch", "split", "stage", "total", "reconstruction", "kl", "kl_per_dim", "seconds"}
        standard |= {"images_per_second", "lr", "fraction_trained"}
        return [k for k, v in record.items() if k not in standard and isinstance(v, float)]

    def _stop_if_diverged(self, records: list[dict[str, Any]], kept: str = "", epoch: int | None = None) -> None:
        """Before anything of this epoch is written: finite weights, optimiser state and numbers, or one
        clear error. ``epoch``: the one diverging (default: the last completed)."""
        checkpoint = self.run_dir / CHECKPOINT
        kept = kept or (
            f"The last good checkpoint is kept: change {self.run_dir / 'config.toml'} and run "
            f"`vaelab train --resume {self.run_dir}`."
            if checkpoint.exists()
            else "Nothing was saved: start again with that changed."
        )
        stop_if_diverged(
            self.config,
            self.epoch if epoch is None else epoch,
            [self.model, self.averaged],
            records,
            kept,
            optimizer=self.optimizer,
        )

    def finish(self) -> dict[str, Any]:
        """Rank 0: the test metrics, the saved model, figures and report. Other ranks: {}."""
        if not self.world.is_main:
            self.world.close()
            return {}
        kept = self._restore_best() if self.config.train.keep_best else {}
        self._say(f"test set: the bound on {len(self.test_batches.images):,} images")
        test = self.evaluate(self.test_batches)
        self._stop_if_diverged([{"split": "test", **test}], kept="No model was saved.")
        model = self.final_model.cpu()  # saved weights and figures are device-independent
        self._log({"epoch": self.epoch, "split": "test", **test, **kept})
        save_model(
            model,
            self.run_dir,
            self.config,
            {
                "dataset": self.dataset.name,
                "class_names": list(self.dataset.class_names),
                "environment": {**environment(), "processes": str(self.world.size)},
                "test": test,
                "epochs_trained": self.epoch,
                "finished": True,  # every epoch of train.epochs, or as many as train.minutes allowed
                "stopped_early": self.epoch < self.config.train.epochs and self.early_stop_due(),
                **kept,
            },
        )
        if self.figures:
            self._say(f"figures: drawing into {self.run.figures}")
        figures = self.write_figures() if self.figures else []
        self.figure_paths = figures
        write_run_report(self.run_dir, self.config, self.records(), figures)
        self.world.close()
        return test

    def _save_best(self) -> None:
        """The weights being evaluated, as the best epoch's (train.keep_best)."""
        from safetensors.torch import save_file

        state = {k: v.detach().contiguous().cpu() for k, v in self.final_model.state_dict().items()}
        meta = {"epoch": str(self.epoch)}
        atomic_write(self.run_dir / BEST, lambda tmp: save_file(state, str(tmp), metadata=meta))

    def _restore_best(self) -> dict[str, int]:
        """Load the best validation epoch's weights into the evaluated model; {"kept_epoch": E} for the records."""
        best = self.best_validation()
        if best is None:
            return {}
        if best[0] != self.epoch:
            from safetensors import SafetensorError
            from safetensors.torch import load_file, safe_open

            path = self.run.own(BEST)
            try:
                with safe_open(str(path), "pt") as f:
                    saved_epoch = (f.metadata() or {}).get("epoch")
                state = load_file(str(path))
            except (OSError, SafetensorError) as err:
                raise VaelabError(f"{path}: cannot read the best epoch's weights ({err})") from None
            if saved_epoch != str(best[0]) or set(state) != set(self.final_model.state_dict()):
                raise VaelabError(
                    f"{path} holds epoch {saved_epoch}'s weights, but the records' best validation epoch is "
                    f"{best[0]}: it was edited or belongs to another run"
                )
            self.final_model.load_state_dict(state)
            self._say(f"keeping epoch {best[0]}'s weights: the best validation total, {best[1]:.2f}")
        return {"kept_epoch": best[0]}

    def _log_hyperparameters(self, writer) -> None:
        """The run's config in TensorBoard's HPARAMS tab, beside the losses it compares runs by."""
        from torch.utils.tensorboard.summary import hparams

        values = {
            f"{section}.{key}": value if isinstance(value, (bool, int, float, str)) else str(value)
            for section, keys in self.config.to_dict().items()
            for key, value in keys.items()
        }
        metrics = {"train/total": 0.0, **({"validation/total": 0.0} if self.validation_batches is not None else {})}
        for summary in hparams(values, metrics):
            writer._get_file_writer().add_summary(summary)

    @torch.no_grad()
    def _log_images(self, writer) -> None:
        """Reconstructions of a few validation images, prior samples and, for a 2-D latent, the manifold, as
        TensorBoard images of this epoch (with the weights being evaluated; the training RNG untouched)."""
        from vaelab.viz import image_grid
        from vaelab.viz.figures import manifold_latents

        model = self.final_model
        was_training = model.training
        model.eval()
        split = self.validation_batches or self.train_batches
        x = to_unit_float(split.images[:TENSORBOARD_RECONSTRUCTIONS]).to(self.device)
        y = None if split.labels is None else split.labels[: len(x)]
        try:
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                view = model.condition(y) if model.takes_labels and y is not None else model
                if view.can("reconstruct") and (y is not None or not model.takes_labels):
                    rows = torch.cat([x.cpu(), view.reconstruct(x).cpu()])
                    _add_image(writer, "reconstructions", image_grid(rows, nrow=len(x)), self.epoch)
                if model.can("sample"):
                    generator = torch.Generator().manual_seed(self.config.train.seed)
                    samples = model.sample(TENSORBOARD_SAMPLES, generator=generator).cpu()
                    _add_image(writer, "samples", image_grid(samples, nrow=8), self.epoch)
                if model.latent_dim == 2 and model.can("decode") and not model.can("condition"):
                    images = model.decode(manifold_latents(model, n=15).to(self.device)).cpu()
                    _add_image(writer, "manifold", image_grid(images, nrow=15), self.epoch)
        finally:
            model.train(was_training)

    def _say(self, line: str) -> None:
        if self._say_progress:
            self.console.print(line, markup=False)

    def write_figures(self) -> list[Path]:
        from vaelab.viz import write_run_figures

        x, y = self.test_batches.images, self.test_batches.labels
        return write_run_figures(
            self.final_model.eval(),
            self.run.figures,
            self.records(),
            to_unit_float(x),
            y,
            class_names=self.dataset.class_names,
            seed=self.config.train.seed,
            figure_format=self.figure_format,
        )


def _model_line(m) -> str:
    """The report's model line: the family's own keys where it has some (MODEL_KEYS), else the slots'."""
    own = [key for key, users in MODEL_KEYS.items() if m.family in users]
    if own:
        return f"- model: {m.family}, likelihood {m.likelihood}, " + ", ".join(f"{k} {getattr(m, k)}" for k in own)
    return f"- model: {m.arch}, latent dim {m.latent_dim}, prior {m.prior}, likelihood {m.likelihood}, posterior {m.posterior}"


def _add_image(writer, tag: str, grid: np.ndarray, step: int) -> None:
    writer.add_image(tag, grid, step, dataformats="HW" if grid.ndim == 2 else "HWC")


def _objective_setting(key: str, value: Any) -> str:
    """``, key value`` for the report's objective line; a list as [a, b], an empty one (not in use) left out."""
    if isinstance(value, list):
        return f", {key} [{', '.join(v if isinstance(v, str) else f'{v:g}' for v in value)}]" if value else ""
    return f", {key} {value}" if isinstance(value, str) else f", {key} {value:g}"


def write_run_report(run_dir: Path, config: RunConfig, records: list[dict[str, Any]], figures: list[Path]) -> None:
    """A short Markdown summary of one run: what was trained, the test numbers, the figures."""
    test = next((r for r in reversed(records) if r["split"] == "test" and "kind" not in r), None)
    train_rows = [r for r in records if r["split"] == "train"]
    m, t = config.model, config.train
    lines = [
        f"# vaelab run: {run_dir.name}",
        "",
        f"- data: {config.data.name} (binarisation: {config.data.binarize}, validation: last {config.data.validation_size} training images)",
        _model_line(m),
        f"- objective: {config.objective.name} (beta {config.objective.beta}, k {config.objective.k}"
        + "".join(
            _objective_setting(key, getattr(config.objective, key)) for key in objective_keys(config.objective.name)
        )
        + (f", {config.objective.gradient} gradient)" if config.objective.name == "iwae" else ")"),
        f"- training: {t.epochs} epochs, batch {t.batch_size}, Adam lr {t.lr} (schedule {t.lr_schedule}, eps {t.adam_eps:g} placed as {t.adam_eps_placement}), "
        f"seed {t.seed}, precision {t.precision}"
        + (", compiled" if t.compile else "")
        + (f"; evaluated with the weights' moving average (decay {t.ema_decay:g} per step)" if t.ema_decay else ""),
    ]
    stages: dict[str, list[int]] = {}
    for r in train_rows:
        if "stage" in r:
            stages.setdefault(str(r["stage"]), []).append(int(r["epoch"]))
    if stages:
        lines.append("- stages: " + ", ".join(f"{name} (epochs {min(e)}-{max(e)})" for name, e in stages.items()))
    if train_rows:
        seconds = sum(r.get("seconds", 0.0) for r in train_rows if isinstance(r.get("seconds"), (int, float)))
        lines.append(f"- training time: {seconds:.0f} s ({seconds / len(train_rows):.1f} s per epoch)")
    if test and "kept_epoch" in test:
        lines.append(
            f"- kept the weights of epoch {test['kept_epoch']} of {test['epoch']}, the best validation total (train.keep_best)"
        )
    if t.early_stopping:
        lines.append(f"- early stopping: after {t.early_stopping} epochs without a better validation total")
    if test:
        lines += [
            "",
            "## Test set (per image, nats)",
            "",
            "| total (-ELBO) | reconstruction | KL |",
            "|---|---|---|",
            f"| {test['total']:.2f} | {test['reconstruction']:.2f} | {test['kl']:.2f} |",
        ]
    if figures:
        lines += ["", "## Figures", ""] + [markdown_figure(p.stem, f"figures/{p.name}") for p in figures]
    atomic_write_text(run_dir / "report.md", "\n".join(lines) + "\n")
