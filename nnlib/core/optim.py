"""Update rules: how a gradient changes the weights. The model's maths lives elsewhere.

An optimizer is a small frozen object (plain data, so engines can ship it)
with two methods:

- ``init_state(params)``: the optimizer's state for a fresh run, one flat
  float32 vector beside the weights (or ``None`` when the rule keeps none).
  Its layout is ``rows`` blocks of ``n_params`` values, one block per
  per-parameter buffer (momentum; Adam's two moments and step count), so the
  state can be sliced and put back with the same indices as the weights
  (:func:`state_rows`). Like the weights, the state travels to the mappers
  each round, comes back, is averaged across mappers (or reset, with
  ``train.optimizer_state: reset``) and is checkpointed; mappers stay
  stateless.
- ``step(params, grad, state, lr)``: one update, in place on ``params`` and
  ``state``.

Every training loop in nnlib (a mapper's local epochs, a synchronous round)
calls :func:`nnlib.core.train.run_steps`, which calls ``step``. The rules
follow PyTorch's ``torch.optim.SGD``, ``Adam`` and ``AdamW`` step for step.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import overload

import numpy as np


def leading_state(state: np.ndarray | None, n_params: int, n: int) -> np.ndarray | None:
    """The part of an optimizer's flat ``state`` that steps the leading ``n`` of ``n_params`` values: the
    state itself when ``n == n_params``, else a view, ``(n,)`` for SGD's momentum or ``(rows, n)`` for
    Adam's three blocks. A step on ``params[:n]`` with it updates ``state`` in place."""
    if state is None or n == n_params:
        return state
    rows = state.reshape(-1, n_params)[:, :n]
    return rows[0] if len(rows) == 1 else rows


@dataclass(frozen=True)
class SGD:
    """SGD with PyTorch's momentum rule: ``v = momentum * v + g; w -= lr * v``.

    ``nesterov`` steps along ``g + momentum * v`` instead; ``weight_decay``
    adds ``weight_decay * w`` to the gradient (L2, on every parameter). The
    state is the momentum buffer ``v`` ``(n_params,)``, or ``None`` when
    ``momentum == 0`` (then the step is ``w -= lr * g``).
    """

    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0

    def init_state(self, params: np.ndarray) -> np.ndarray | None:
        return np.zeros_like(params) if self.momentum > 0 else None

    def step(self, params: np.ndarray, grad: np.ndarray, state: np.ndarray | None, lr: float) -> None:
        dtype = params.dtype.type
        if self.weight_decay:
            grad = grad + dtype(self.weight_decay) * params
        if state is not None:
            state *= dtype(self.momentum)
            state += grad
            grad = grad + dtype(self.momentum) * state if self.nesterov else state
        params -= dtype(lr) * grad


@dataclass(frozen=True)
class Adam:
    """Adam (Kingma & Ba), or AdamW with ``decoupled`` weight decay, as PyTorch computes them.

    State: three blocks of ``n_params``: the first moment ``m``, the second
    moment ``v`` and each parameter's step count ``t`` (a parameter that a
    round does not train, as in IST, keeps its own count and bias correction).
    ``weight_decay`` is added to the gradient (Adam) or applied as
    ``w *= 1 - lr * weight_decay`` before the step (AdamW).
    """

    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    decoupled: bool = False

    def init_state(self, params: np.ndarray) -> np.ndarray:
        return np.zeros(3 * params.size, params.dtype)

    def step(self, params: np.ndarray, grad: np.ndarray, state: np.ndarray, lr: float) -> None:
        dtype = params.dtype.type
        m, v, t = state.reshape(3, params.size)
        if self.weight_decay and self.decoupled:
            params *= dtype(1 - lr * self.weight_decay)
        elif self.weight_decay:
            grad = grad + dtype(self.weight_decay) * params
        t += 1
        m *= dtype(self.beta1)
        m += dtype(1 - self.beta1) * grad
        v *= dtype(self.beta2)
        v += dtype(1 - self.beta2) * grad * grad
        step_size = (lr / (1 - np.power(self.beta1, t, dtype=np.float64))).astype(params.dtype)
        correction2 = np.sqrt(1 - np.power(self.beta2, t, dtype=np.float64)).astype(params.dtype)
        params -= step_size * m / (np.sqrt(v) / correction2 + dtype(self.eps))


@dataclass(frozen=True)
class ServerSGD:
    """The server's step after a round (FedAvgM, Hsu et al. 2019): SGD on the round's pseudo-gradient.

    With ``w`` the round's starting weights and ``w_avg`` what the mappers'
    results combine to, the pseudo-gradient is ``d = w - w_avg``; then
    ``v = momentum * v + d`` and the new weights are ``w - lr * v``. ``lr=1``
    and ``momentum=0`` give ``w_avg``: plain averaging. State: ``v``
    ``(n_params,)``, or ``None`` without momentum.
    """

    lr: float = 1.0
    momentum: float = 0.0

    def init_state(self, params: np.ndarray) -> np.ndarray | None:
        return np.zeros_like(params) if self.momentum > 0 else None

    def step(self, start: np.ndarray, combined: np.ndarray, state: np.ndarray | None) -> np.ndarray:
        """The new weights from the round's ``start`` and ``combined`` weights; ``state`` updated in place."""
        dtype = start.dtype.type
        delta = start - combined
        if state is not None:
            state *= dtype(self.momentum)
            state += delta
            delta = state
        return start - dtype(self.lr) * delta


OPTIMIZERS = {"SGD": SGD, "Adam": Adam}


@overload
def state_rows(state: np.ndarray, n_params: int) -> np.ndarray: ...
@overload
def state_rows(state: None, n_params: int) -> None: ...
def state_rows(state: np.ndarray | None, n_params: int) -> np.ndarray | None:
    """The state as ``(rows, n_params)``: one row per per-parameter buffer (a view)."""
    return None if state is None else state.reshape(-1, n_params)


def to_json(optimizer) -> str:
    """An optimizer as text (to ship it in a file): its class and its settings."""
    return json.dumps({"rule": type(optimizer).__name__, **asdict(optimizer)})


def from_json(text: str):
    settings = json.loads(text)
    return OPTIMIZERS[settings.pop("rule")](**settings)
