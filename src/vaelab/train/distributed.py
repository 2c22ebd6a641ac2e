"""Data-parallel training with torch.distributed, started by ``torchrun``.

``torchrun --nproc-per-node N -m vaelab train ...`` starts N copies of the command with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in their environment. Each
process then:

* joins the process group (gloo on CPU, nccl on CUDA, one GPU per process: ``cuda:LOCAL_RANK``);
* builds the same shuffled global batch as a single process would (same seed, same data RNG) and
  keeps its contiguous slice of it (``shard_rows``): ``train.batch_size`` is the *global* batch;
* draws the reparameterisation noise of the whole global batch and keeps its rows (see
  ``vaelab.model.objectives.Shard``), so every process's RNG stays in step with one process's;
* back-propagates its images' loss divided by the global batch size and sums the gradients over the
  processes (one all-reduce per step): the update is the single-process update on the global batch,
  up to float summation order;
* sums the epoch's metrics over the processes (all-reduce).

Only rank 0 writes the run directory (config, metrics, checkpoints, model, figures, report) and
evaluates the validation and test sets. Resuming works as for one process: every rank reads rank 0's
checkpoint, whose RNG states are those of every rank.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from vaelab.errors import VaelabError


def shard_rows(total: int, rank: int, size: int) -> tuple[int, int]:
    """Rows ``start:stop`` of a batch of ``total`` images that process ``rank`` of ``size`` takes
    (contiguous, sizes differing by at most one)."""
    return rank * total // size, (rank + 1) * total // size


def launched_rank() -> int:
    """This process's rank under torchrun (0 when not launched by it)."""
    return int(os.environ.get("RANK", "0"))


@dataclass
class World:
    """The processes of one run: ``size`` 1 is ordinary single-process training."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def rows(self, total: int) -> tuple[int, int]:
        return shard_rows(total, self.rank, self.size)

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over the processes, in place (float64 goes over gloo as is)."""
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def sum_gradients(self, parameters: list[torch.nn.Parameter]) -> None:
        """Replace every gradient by its sum over the processes: one all-reduce of one flat buffer.

        A parameter without a gradient here (an empty shard) contributes zeros.
        """
        if not self.distributed:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        flat = torch.cat([g.reshape(-1) for g in grads])  # reshape copies channels-last grads to NCHW order
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for p, g in zip(parameters, grads):
            n = g.numel()
            summed = flat[offset : offset + n].view(g.shape)
            if p.grad is None:
                p.grad = torch.empty_like(p)
            p.grad.copy_(summed)  # copy_ restores the gradient's own layout
            offset += n

    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        """Make every process start from rank 0's weights and buffers."""
        if self.distributed:
            for tensor in list(module.parameters()) + list(module.buffers()):
                flat = tensor.detach().contiguous()
                dist.broadcast(flat, src=0)
                if flat.data_ptr() != tensor.data_ptr():
                    with torch.no_grad():
                        tensor.copy_(flat)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        """Leave the process group together: every rank waits for the others, then tears down.

        Rank 0 still evaluates and writes the run after the last step while the others are done;
        a rank that tore down its gloo connections alone was seen, rarely (2 runs in about 400
        here), to abort at that point, so the teardown waits for everyone first.
        """
        if self.distributed and dist.is_initialized():
            self.barrier()
            dist.destroy_process_group()


def init_world(device: str) -> tuple[World, str]:
    """Join the process group if launched by torchrun with more than one process.

    Returns the world and the device this process trains on (``cuda`` becomes ``cuda:LOCAL_RANK``).
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    on_cuda = device.startswith("cuda")
    if on_cuda:
        if device != "cuda":
            raise VaelabError(
                f"with torchrun use train.device=cuda (each process takes cuda:LOCAL_RANK), not {device!r}"
            )
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if on_cuda else "gloo")
    return World(rank, size, local_rank), device
