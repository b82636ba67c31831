"""Local training: the mini-batch order and the one training loop.

Pure functions of arrays: no engine, no I/O. Randomness comes only from the
``rng`` passed in, so a caller that seeds it from ``(seed, round, shard)``
gets the same result every time the same shard is trained in the same round,
which is what makes a retried task reproduce its result.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

SHUFFLES = ("exact", "block")  # data.shuffle: how an epoch orders a shard's rows

BLOCK_BYTES = 1 << 20  # block shuffle: a block of rows is read in one sequential read of about this size
WINDOW_BYTES = 16 << 20  # block shuffle: the rows shuffled together (the shuffle buffer), about this size


@dataclass(frozen=True)
class LocalSchedule:
    """How much local work one mapper does per round.

    Exactly one of ``local_epochs`` and ``local_steps`` is used: with
    ``local_steps`` set, that many mini-batch steps are taken, walking through
    fresh shuffles of the shard as often as needed. ``shuffle`` is
    ``data.shuffle``: ``exact`` (each epoch a permutation of the whole
    shard) or ``block`` (:func:`block_windows`).
    """

    batch_size: int
    local_epochs: int = 1
    local_steps: int | None = None
    shuffle: str = "exact"


def permutation(n: int, rng: np.random.Generator) -> np.ndarray:
    """``rng.permutation(n)``, the same values drawn the same way, in int32 when ``n`` allows (half the bytes).

    numpy's ``permutation(n)`` is ``shuffle(arange(n))``, a Fisher-Yates
    shuffle whose draws do not depend on the dtype, so the order and the
    generator's state after it are those of ``rng.permutation(n)``
    (``tests/test_disk_sampling.py`` holds this). Exact sampling keeps this
    array for an epoch: 4 bytes a row.
    """
    order = np.arange(n, dtype=np.int32 if n < 2**31 else np.int64)
    rng.shuffle(order)
    return order


@dataclass(frozen=True)
class Blocks:
    """The block shuffle's sizes for one shard: rows per block and rows per shuffle window (a whole number of
    blocks). :meth:`of` sizes them from a row's bytes (features, label or targets and weight together)."""

    block_rows: int
    window_rows: int

    @classmethod
    def of(cls, row_bytes: int) -> Blocks:
        block = max(1, BLOCK_BYTES // max(row_bytes, 1))
        return cls(block, block * max(1, WINDOW_BYTES // (block * max(row_bytes, 1))))


def block_windows(n: int, batch_size: int, rng: np.random.Generator, blocks: Blocks) -> Iterator[list[np.ndarray]]:
    """One epoch of the block shuffle, a shuffle window at a time: each window's mini-batches (int64 row indices).

    The shard's rows are cut into blocks of ``blocks.block_rows``
    consecutive rows; the epoch draws an order of the blocks, then takes them
    a window (``blocks.window_rows`` rows) at a time and draws a permutation
    of the window's rows (the shuffle buffer), cut into batches of
    ``batch_size``. A batch may take the end of one window and the start of
    the next (it is listed with the next); the epoch's last batch may be
    smaller. Each epoch is a permutation of ``range(n)``; a window's rows are
    a few runs of consecutive rows, so a disk shard reads them sequentially,
    and what is held is one window's indices (plus one int64 per block),
    whatever ``n``.
    """
    n_blocks = -(-n // blocks.block_rows)
    order = rng.permutation(n_blocks)
    per_window = blocks.window_rows // blocks.block_rows
    carry = np.empty(0, np.int64)
    for w in range(0, n_blocks, per_window):
        starts = order[w : w + per_window] * blocks.block_rows
        stops = np.minimum(starts + blocks.block_rows, n)
        lengths = stops - starts
        # the window's rows, block after block: each block's start repeated, plus 0..length-1
        rows = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
        rows = np.concatenate([carry, rows[rng.permutation(len(rows))]])
        cut = len(rows) - len(rows) % batch_size
        window = [rows[lo : lo + batch_size] for lo in range(0, cut, batch_size)]
        carry = rows[cut:]
        if w + per_window >= n_blocks and len(carry):
            window.append(carry)
        yield window


def epoch_batches(
    n: int, batch_size: int, rng: np.random.Generator, shuffle: str = "exact", blocks: Blocks | None = None
) -> Iterator[np.ndarray]:
    """One epoch's mini-batches of a shard of ``n`` rows: index arrays, ``ceil(n / batch_size)`` of them.

    ``exact``: a permutation of ``range(n)`` (:func:`permutation`, the
    values of ``rng.permutation(n)``) cut into batches; ``block``: the
    batches of :func:`block_windows` with ``blocks`` (default:
    :meth:`Blocks.of` an 8-byte row). Raises ``ValueError`` for another ``shuffle``.
    """
    if shuffle == "exact":
        order = permutation(n, rng)
        for start in range(0, n, batch_size):
            yield order[start : start + batch_size]
    elif shuffle == "block":
        for window in block_windows(n, batch_size, rng, blocks or Blocks.of(8)):
            yield from window
    else:
        raise ValueError(f"shuffle: one of {', '.join(SHUFFLES)}, got {shuffle!r}")


class Batches:
    """The mini-batches of one round, in order: index arrays drawn epoch by epoch as the steps reach them.

    ``len()`` and :attr:`sizes` are known without drawing; iterating draws
    (once: the generator moves on). An epoch is :func:`epoch_batches`, so
    at most one epoch's order is held at a time: exact sampling's
    permutation (4 bytes a row), or the block shuffle's window.
    """

    def __init__(self, n_samples: int, schedule: LocalSchedule, rng: np.random.Generator, row_bytes: int = 8):
        self.n_samples, self.schedule, self.rng = n_samples, schedule, rng
        self.blocks = Blocks.of(row_bytes)
        per_epoch = [min(schedule.batch_size, n_samples - s) for s in range(0, n_samples, schedule.batch_size)]
        if schedule.local_steps is None:
            self.sizes = per_epoch * schedule.local_epochs
        elif per_epoch:
            self.sizes = (per_epoch * -(-schedule.local_steps // len(per_epoch)))[: schedule.local_steps]
        else:
            self.sizes = []
        self._drawn = False

    def __len__(self) -> int:
        return len(self.sizes)

    def __iter__(self) -> Iterator[np.ndarray]:
        for group in self.windows(None):
            yield from group

    def windows(self, max_rows: int | None) -> Iterator[list[np.ndarray]]:
        """The batches in groups read together: consecutive batches of at most ``max_rows`` rows (at least
        one batch; ``None``: no bound); under the block shuffle, a group never spans two shuffle windows, so
        each is read as whole blocks."""
        if self._drawn:
            raise RuntimeError("a round's batches are drawn once")
        self._drawn = True
        left = len(self.sizes)
        while left:
            if self.schedule.shuffle == "block":
                windows: Iterator[Iterable[np.ndarray]] = block_windows(
                    self.n_samples, self.schedule.batch_size, self.rng, self.blocks
                )
            else:
                windows = iter([epoch_batches(self.n_samples, self.schedule.batch_size, self.rng, "exact")])
            for window in windows:
                group: list[np.ndarray] = []
                held = 0
                for idx in window:
                    if group and max_rows is not None and held + len(idx) > max_rows:
                        yield group
                        group, held = [], 0
                    group.append(idx)
                    held += len(idx)
                    left -= 1
                    if not left:
                        break
                if group:
                    yield group
                if not left:
                    return


def batch_indices(n_samples: int, schedule: LocalSchedule, rng: np.random.Generator) -> list[np.ndarray]:
    """Index arrays of the mini-batches of one round, in order (:class:`Batches`, drawn whole).

    Each epoch is one permutation of ``range(n_samples)`` cut into batches of
    ``batch_size``; the last batch of an epoch may be smaller.
    """
    return list(Batches(n_samples, schedule, rng))


def row_bytes(*arrays) -> int:
    """The bytes of one row of each array together (``None`` skipped): what a row of a shard costs to hold."""
    return sum(int(np.prod(a.shape[1:], dtype=np.int64)) * np.dtype(a.dtype).itemsize for a in arrays if a is not None)


def batch_rows(x, y, sample_weight, batches: Iterable[np.ndarray]) -> Iterator[tuple]:
    """``(x[idx], y[idx], sample_weight[idx] or None)`` for each index array of ``batches``, in order.

    An array with a ``batch_rows`` method (a disk shard's
    :class:`nnlib.data.shard_files.DiskArray`) serves them itself, reading a
    window of batches at a time; the rows are the same.
    """
    serve = getattr(x, "batch_rows", None)
    if serve is not None:
        return serve(batches, y, sample_weight)
    return ((x[idx], y[idx], None if sample_weight is None else sample_weight[idx]) for idx in batches)


def run_steps(
    params: np.ndarray,
    state: np.ndarray | None,
    optimizer,
    lrs: Iterable[float],
    gradient: Callable[[np.ndarray, int], np.ndarray],
) -> None:
    """The training loop: for each step, ``optimizer.step(params, gradient(params, step), state, lr)``.

    ``params`` (n_params,) and ``state`` are updated in place. ``gradient``
    says where the step's gradient comes from: one mapper's mini-batch (a
    local round) or the mean over every mapper's mini-batch (a synchronous
    round).
    """
    for step, lr in enumerate(lrs):
        optimizer.step(params, gradient(params, step), state, lr)


@dataclass
class LocalUpdate:
    """What local training returns: new weights, optimizer state, how much was seen."""

    params: np.ndarray  # (n_params,) float32
    opt_state: np.ndarray | None  # the optimizer's state, e.g. the momentum buffer
    n_samples: int  # size of the shard
    train_loss: float  # mean data loss over the round's batches, weighted by the sample weights
    steps: int  # mini-batch steps taken
    total_weight: float = 0.0  # the shard's sum of sample weights (n_samples without weights): combine: weighted


def batch_weight_sums(
    sample_weight: np.ndarray, batches: list[np.ndarray], mean_weight: float | None = None
) -> list[float]:
    """The loss denominator of each mini-batch: its size times the mean weight (float64).

    So a step's loss is the batch mean of ``w_i * l_i`` with the weights
    rescaled to mean 1; :mod:`nnlib.core.losses` says why a batch is not
    normalised by its own weight sum. ``mean_weight`` defaults to the shard's
    (``sample_weight`` ``(n,)``); a synchronous round passes the mean over
    every mapper's rows, so that its mean gradient, weighted by batch sizes as
    today, is the gradient of the union batch. All weights 1 give the batch
    sizes exactly; a mean weight of 0 gives 0 (zero losses and gradients).
    """
    if mean_weight is None:
        mean_weight = float(np.sum(sample_weight, dtype=np.float64)) / max(len(sample_weight), 1)
    return [len(idx) * mean_weight for idx in batches]


def local_sgd(
    backend,
    params,
    opt_state,
    optimizer,
    x,
    y,
    schedule: LocalSchedule,
    lr: float,
    rng: np.random.Generator,
    proximal_mu: float = 0.0,
    sample_weight: np.ndarray | None = None,
) -> LocalUpdate:
    """Train a copy of ``params`` on the shard ``(x, y)`` for one round of ``schedule``.

    ``x`` ``(n, n_features)``; ``y`` ``(n,)`` int64 classes, or float targets
    ``(n,)`` / ``(n, n_targets)`` under regression; ``sample_weight``
    ``(n,)`` float ``>= 0`` or ``None``. With weights, step ``s`` minimises
    ``sum_{i in batch} w_i l_i / (len(batch) * mean(w))``
    (:func:`batch_weight_sums`), and ``train_loss`` is the weighted mean of
    the losses seen, ``sum_s loss_s * S_s / sum_s sum_{i in batch s} w_i``
    (0 when every weight seen is 0). ``None`` runs the unweighted code; all
    weights 1 give the same bits.

    ``proximal_mu > 0`` is FedProx: the objective gains ``(mu/2) * ||w - w0||^2``
    around the round's starting weights ``w0``, so the gradient gains
    ``mu * (w - w0)`` and the local weights stay near the shared ones.

    A backend with a ``train_steps`` method (the torch backend,
    :meth:`nnlib.core.torch_mlp.TorchModel.train_steps`) runs the round's
    steps itself, on the same batches and update rule; otherwise each step is
    ``backend.loss_and_grad`` then ``optimizer.step`` (:func:`run_steps`).
    """
    batches = Batches(len(y), schedule, rng, row_bytes(x, y, sample_weight))
    start = params
    mu = params.dtype.type(proximal_mu)
    params = params.copy()
    opt_state = None if opt_state is None else opt_state.copy()
    seen = 0.0  # rows, or their total sample weight, summed batch by batch as the steps take them
    if sample_weight is None:
        seen, sums, total_weight = sum(batches.sizes), None, float(len(y))
    else:
        total_weight = float(np.sum(sample_weight, dtype=np.float64))
        sums = [size * (total_weight / max(len(sample_weight), 1)) for size in batches.sizes]

    def mean_loss(loss_sum: float) -> float:
        if sample_weight is None:
            return loss_sum / max(seen, 1)
        return loss_sum / seen if seen > 0 else 0.0

    def counted(rows):
        """The batches' rows as they pass, their weights summed into ``seen`` (in batch order, as before)."""
        nonlocal seen
        for xb, yb, wb in rows:
            if wb is not None:
                seen += float(np.sum(wb, dtype=np.float64))
            yield xb, yb, wb

    fast = getattr(backend, "train_steps", None)
    if fast is not None:  # the backend's own loop (torch: one flat tensor for the whole round)
        kwargs = {} if sample_weight is None else {"sample_weight": sample_weight, "weight_sums": sums}
        if getattr(x, "batch_rows", None) is None:  # arrays in memory: the backend indexes them itself
            drawn: Batches | list[np.ndarray] = list(batches)
            if sample_weight is not None:
                seen = sum(float(np.sum(sample_weight[b], dtype=np.float64)) for b in drawn)
        else:  # a disk shard: the batches' rows as the reader serves them
            drawn, kwargs["rows"] = batches, counted(batch_rows(x, y, sample_weight, batches))
        loss_sum = fast(params, opt_state, optimizer, x, y, drawn, lr, start=start, proximal_mu=proximal_mu, **kwargs)
        return LocalUpdate(params, opt_state, len(y), mean_loss(loss_sum), len(batches), total_weight)
    rows = counted(batch_rows(x, y, sample_weight, batches))
    loss_sum = 0.0

    def gradient(w, step):
        nonlocal loss_sum
        xb, yb, wb = next(rows)
        if sums is None:
            loss, grad = backend.loss_and_grad(w, xb, yb)
            loss_sum += loss * len(yb)
        else:
            loss, grad = backend.loss_and_grad(w, xb, yb, sample_weight=wb, weight_sum=sums[step])
            loss_sum += loss * sums[step]
        if proximal_mu:
            grad += mu * (w - start)
        return grad

    with np.errstate(all="ignore"):  # divergence is reported by the caller, by round and mapper
        run_steps(params, opt_state, optimizer, [lr] * len(batches), gradient)
    return LocalUpdate(params, opt_state, len(y), mean_loss(loss_sum), len(batches), total_weight)
