"""Learning-rate schedules torch does not have by name.

``inverse_time``: Keras' ``SGD(lr, decay=d)`` (Keras < 2.11; ``InverseTimeDecay`` since), which
the Keras papers of 2019-2020 trained with: ``lr_t = lr / (1 + d * t)`` after ``t`` optimizer
steps. Used with ``trainer.sched_interval=step`` (the scheduler steps after every optimizer
step, as Keras counts iterations); ``conf/sched/inverse_time.yaml``.
"""

from __future__ import annotations

from torch.optim.lr_scheduler import LambdaLR


def inverse_time(optimizer, decay: float) -> LambdaLR:
    """``LambdaLR`` with factor ``1 / (1 + decay * t)``."""
    if decay < 0:
        raise ValueError(f"sched.decay={decay} must be >= 0")
    return LambdaLR(optimizer, lambda t: 1.0 / (1.0 + decay * t))
