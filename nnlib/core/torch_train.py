"""The torch backend's training loop pieces: tensors over numpy memory, and the update rules on flat tensors.

Every tensor the torch backend makes from a numpy array is made by
:func:`as_tensor` (the one place that decides where tensors live), and it
shares the array's memory, so updating the tensor updates the flat float32
vector that travels between mappers.

:func:`flat_stepper` is :mod:`nnlib.core.optim`'s rules (SGD with momentum,
nesterov and weight decay; Adam; AdamW) written with in-place torch ops on
the flat parameter tensor and the flat state tensor, with the same state
layout (``rows`` blocks of ``n_params``), so a round trained here hands back
state that combines, resets and checkpoints as the numpy loop's does. The
formulas are the numpy rules'; the last bits may differ (torch fuses
``a + alpha * b``), within float32 rounding of ``torch.optim``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch

from nnlib.core.optim import SGD, Adam


def as_tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor over ``array``'s memory (no copy; writes go to the array).

    Read-only arrays (a shard handed over by an engine) are wrapped too: the
    backend never writes to data, only to parameters and state.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def flat_stepper(
    optimizer, params: torch.Tensor, state: torch.Tensor | None, n_params: int
) -> tuple[Callable[[torch.Tensor, float], None], Callable[[], None]]:
    """``(step, finish)`` for ``optimizer`` on the flat ``params`` ``(n,)`` and ``state``.

    ``step(grad, lr)`` is one update, in place on ``params`` and ``state``
    (``grad`` ``(n,)`` is the step's own buffer and may be overwritten).
    ``finish()`` must be called after the last step (Adam writes its step
    counts back). ``params`` may be the leading ``n <= n_params`` entries of
    the flat vector (the trained parameters before a module's buffers);
    ``state`` is the whole state vector, ``rows x n_params``.

    Raises ``TypeError`` for a rule other than :class:`SGD` and :class:`Adam`.
    """
    n = params.numel()
    rows = None if state is None else state.view(-1, n_params)[:, :n]
    if isinstance(optimizer, SGD):
        return _sgd(optimizer, params, None if rows is None else rows[0]), lambda: None
    if isinstance(optimizer, Adam):
        if rows is None:
            raise TypeError("optimizer: Adam keeps its moments and step counts in a state vector, none was given")
        return _adam(optimizer, params, rows)
    raise TypeError(f"optimizer: the torch loop knows SGD and Adam, got {type(optimizer).__name__}")


def _sgd(opt: SGD, w: torch.Tensor, v: torch.Tensor | None):
    momentum, weight_decay = float(np.float32(opt.momentum)), float(np.float32(opt.weight_decay))

    def step(g: torch.Tensor, lr: float) -> None:
        if weight_decay:
            g.add_(w, alpha=weight_decay)  # g + weight_decay * w
        if v is not None:
            v.mul_(momentum).add_(g)  # v = momentum * v + g
            g = g.add_(v, alpha=momentum) if opt.nesterov else v
        w.add_(g, alpha=-float(np.float32(lr)))  # w -= lr * g

    return step


def _adam(opt: Adam, w: torch.Tensor, rows: torch.Tensor):
    m, v, t = rows[0], rows[1], rows[2]
    b1, b2 = float(np.float32(opt.beta1)), float(np.float32(opt.beta2))
    one_minus_b1, one_minus_b2 = float(np.float32(1 - opt.beta1)), float(np.float32(1 - opt.beta2))
    eps, weight_decay = float(np.float32(opt.eps)), float(np.float32(opt.weight_decay))
    # Every entry's step count moves by one a step, so counts that agree at the start agree throughout and
    # the bias corrections are scalars (computed in float64 and rounded to float32, as the numpy rule does).
    uniform = bool(t.numel() == 0 or t.min() == t.max())
    t0 = float(t[0]) if t.numel() else 0.0
    taken = 0

    def step(g: torch.Tensor, lr: float) -> None:
        nonlocal taken
        if weight_decay and opt.decoupled:
            w.mul_(float(np.float32(1 - lr * opt.weight_decay)))
        elif weight_decay:
            g.add_(w, alpha=weight_decay)
        taken += 1
        m.mul_(b1).add_(g, alpha=one_minus_b1)
        v.mul_(b2).addcmul_(g, g, value=one_minus_b2)
        if uniform:
            count = t0 + taken
            step_size = float(np.float32(lr / (1 - opt.beta1**count)))
            correction2 = float(np.float32(np.sqrt(1 - opt.beta2**count)))
            denom = v.sqrt().div_(correction2).add_(eps)
            w.addcdiv_(m, denom, value=-step_size)
        else:  # per-entry counts (a sub-network's rows kept their own): the corrections are vectors
            t.add_(1)
            counts = t.double()
            step_sizes = (lr / (1 - torch.pow(opt.beta1, counts))).to(w.dtype)
            corrections2 = torch.sqrt(1 - torch.pow(opt.beta2, counts)).to(w.dtype)
            w.sub_(step_sizes * m / (v.sqrt() / corrections2 + eps))

    def finish() -> None:
        if uniform:
            t.add_(taken)

    return step, finish
