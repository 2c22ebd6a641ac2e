"""Learning-rate schedules, as a pure function of the epoch (so a resumed run follows the same one).

* ``constant``: ``train.lr`` throughout.
* ``burda``: Burda, Grosse & Salakhutdinov (2016): 8 stages, stage i lasting 3^i epochs (3,280 in
  all) with learning rate lr * 10^(-i/7). For ``train.epochs`` other than 3,280 the stages are
  compressed in proportion (stage i ends at epoch round(epochs * (3^(i+1) - 1) / 2 / 3280)).
* ``burda-even``: the same 8 learning rates in 8 stages of equal length. For budgets far below
  3,280 epochs the proportional compression leaves the high rates almost nothing (at 180 epochs,
  2 epochs at lr * 10^(-3/7) or above, against 40 of the paper's 3,280).
"""

from __future__ import annotations

BURDA_STAGES = 8
BURDA_EPOCHS = (3**BURDA_STAGES - 1) // 2  # 3280


def burda_stage(epoch: int, total_epochs: int) -> int:
    """The stage (0..7) of the 0-based ``epoch`` in a run of ``total_epochs`` epochs."""
    for stage in range(BURDA_STAGES):
        end = round(total_epochs * ((3 ** (stage + 1) - 1) // 2) / BURDA_EPOCHS)
        if epoch < end:
            return stage
    return BURDA_STAGES - 1


def even_stage(epoch: int, total_epochs: int) -> int:
    """The stage (0..7) of the 0-based ``epoch`` when the 8 stages are equally long."""
    return min(BURDA_STAGES - 1, epoch * BURDA_STAGES // max(total_epochs, 1))


STAGED = {"burda": burda_stage, "burda-even": even_stage}


def learning_rate(schedule: str, base_lr: float, epoch: int, total_epochs: int) -> float:
    if schedule in STAGED:
        return base_lr * 10 ** (-STAGED[schedule](epoch, total_epochs) / (BURDA_STAGES - 1))
    return base_lr
