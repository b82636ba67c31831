"""Update rules: how a gradient changes the weights. The model's maths lives elsewhere.

An optimizer is a small frozen object (plain data, so engines can ship it)
with two methods:

- ``init_state(params)``: the optimizer's state for a fresh run, one flat
  float32 vector beside the weights (or ``None`` when the rule keeps none).
  Like the weights, the state travels to the mappers each round, comes back,
  is averaged across mappers and is checkpointed; mappers stay stateless.
- ``step(params, grad, state, lr)``: one update, in place on ``params`` and
  ``state``.

Every training loop in nnlib (a mapper's local epochs, a synchronous round)
calls :func:`nnlib.core.train.run_steps`, which calls ``step``; a new rule
(Adam, a proximal term) is one more class here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SGD:
    """SGD with PyTorch's momentum rule: ``v = momentum * v + g; w -= lr * v``.

    The state is the momentum buffer ``v`` ``(n_params,)``, or ``None`` when
    ``momentum == 0`` (then the step is ``w -= lr * g``).
    """

    momentum: float = 0.0

    def init_state(self, params: np.ndarray) -> np.ndarray | None:
        return np.zeros_like(params) if self.momentum > 0 else None

    def step(self, params: np.ndarray, grad: np.ndarray, state: np.ndarray | None, lr: float) -> None:
        dtype = params.dtype.type
        if state is not None:
            state *= dtype(self.momentum)
            state += grad
            grad = state
        params -= dtype(lr) * grad
