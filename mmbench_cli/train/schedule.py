"""Learning-rate schedule and MM1's learning-rate rule.

The schedule is a pure function of the step (no scheduler object to save): resuming at step ``s`` gives
exactly the learning rate an uninterrupted run would have used.
"""

from __future__ import annotations

import math

from mmbench_cli.config import TrainConfig


def mm1_learning_rate(num_params: int) -> float:
    """MM1's peak-LR rule fitted on its grid search: η = exp(−0.4214 · ln N − 0.5535), N = parameter count."""
    if num_params <= 0:
        raise ValueError("num_params must be positive")
    return math.exp(-0.4214 * math.log(num_params) - 0.5535)


def resolve_lr_and_wd(train_cfg: TrainConfig, num_params: int) -> tuple[float, float]:
    """The peak learning rate and weight decay of a run, applying ``mm1-rule`` where asked.

    MM1 sets weight decay to 0.1 · η when using its rule; ``weight_decay: mm1-rule`` does the same.
    """
    lr = mm1_learning_rate(num_params) if train_cfg.lr == "mm1-rule" else float(train_cfg.lr)
    if train_cfg.weight_decay == "mm1-rule":
        weight_decay = 0.1 * lr
    elif train_cfg.lr == "mm1-rule" and "weight_decay" not in train_cfg.model_fields_set:
        weight_decay = 0.1 * lr  # the rule sets both unless the user chose a decay explicitly
    else:
        weight_decay = float(train_cfg.weight_decay)
    return lr, weight_decay


def lr_at(step: int, peak_lr: float, total_steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    """Linear warm-up to ``peak_lr`` over ``warmup_steps``, then cosine decay to ``peak_lr · min_lr_ratio``.

    ``step`` counts optimizer updates from 0: update 0 uses ``lr_at(0)`` (= peak/warmup when warming up).
    """
    min_lr = peak_lr * min_lr_ratio
    if warmup_steps > 0 and step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / decay_steps, 1.0)
    return min_lr + 0.5 * (peak_lr - min_lr) * (1.0 + math.cos(math.pi * progress))
