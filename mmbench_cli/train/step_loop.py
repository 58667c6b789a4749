"""The training loop's skeleton, shared by the MLLM loop (``loop.py``) and encoder pre-training
(``encoder_pretrain.py``): for each optimizer update, the learning rate from the schedule, one step, a finiteness
check, then whatever the caller does after a step (log, checkpoint), with a progress bar.

What a step *is* (batches, forward, backward through the strategy) and what happens after it stay with the caller:
this module owns only the order of things, so both loops resume, log and stop on the same schedule.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mmbench_cli.config import TrainConfig
from mmbench_cli.progress import progress_bar
from mmbench_cli.train.schedule import lr_at


@dataclass
class StepResult:
    """What one optimizer update reports: its loss and gradient norm, and what it consumed."""

    loss: float
    grad_norm: float
    tokens: float = 0.0
    images: float = 0.0
    seconds: float = field(default=0.0, compare=False)  # set by ``run_steps``: the update's wall time


def run_steps(tcfg: TrainConfig, peak_lr: float, start: int, step: Callable[[float], StepResult],
              check: Callable[[int, StepResult], None], after: Callable[[int, float, StepResult], None], *,
              label: str, stats: str, show: bool, bar_fields: Callable[[StepResult], dict[str, float]] | None = None,
              ) -> None:
    """Run updates ``start + 1`` .. ``tcfg.steps``: ``step(lr)`` does one, ``check(done, result)`` raises if it went
    wrong (nothing of that update is logged or saved), ``after(done, lr, result)`` logs and checkpoints.

    ``done`` counts updates from 1; the learning rate of update ``done`` is ``lr_at(done - 1)``, so a run resumed at
    step ``s`` continues with the rate an uninterrupted run would use.
    """
    with progress_bar(label, tcfg.steps, completed=start, enabled=show, stats=stats) as bar:
        for index in range(start, tcfg.steps):
            lr = lr_at(index, peak_lr, tcfg.steps, tcfg.warmup_steps, tcfg.min_lr_ratio)
            started = time.perf_counter()
            result = step(lr)
            result.seconds = time.perf_counter() - started
            done = index + 1
            check(done, result)
            after(done, lr, result)
            bar.update(completed=done, loss=result.loss, lr=lr, **(bar_fields(result) if bar_fields else {}))
