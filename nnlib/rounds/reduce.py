"""The reduce: how mapper results become the next weights, written once for every engine.

A local round's reduce is a sum of *shares*. Once the good mappers are known
(:func:`check_bad_mappers`, the one NaN/inf judgement), :class:`RoundShares`
gives each good mapper's share, a full-length float64 vector (its
coefficient times its weights, or its sub-network embedded in its places,
zeros elsewhere), and a finish step that turns the sum of the shares into
the next float32 weights:

- the driver-side reduce (:class:`RoundReducer`: local, Spark, mrjob) adds
  the shares in mapper order, whatever order the results arrived in;
- MPI adds the same shares with one ``Allreduce``.

A synchronous round's mean gradient is the same idea with each mapper's
coefficient its share of the step's samples, ``b_m / sum b`` (``1/k`` when
the batches are equal; 0 for a mapper whose shard is used up for the epoch,
:meth:`nnlib.rounds.schedule.RoundPlan.sync_batch_sizes`), so the mean is
the gradient of the step's whole global batch (:func:`sync_coefficients`,
:func:`gradient_share`, :func:`mean_gradient`); its NaN/inf judgement is
:func:`check_mean_gradient`, used by every engine.

The server optimizer's step (:class:`Server`, ``server.lr`` and
``server.momentum``) finishes a local round's reduce on the driver.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from nnlib.core.combine import COEFFICIENTS
from nnlib.core.optim import ServerSGD, state_rows
from nnlib.core.params import DTYPE
from nnlib.core.split import embed, held_count, shares_divisor
from nnlib.errors import DivergenceError
from nnlib.rounds.payload import Combined, MapperResult, RoundPayload


def diverged(round_index: int, mapper: int) -> DivergenceError:
    return DivergenceError(
        f"round {round_index + 1}: mapper {mapper} returned weights containing NaN or inf "
        "(training diverged; try a smaller train.lr, or train.skip_bad_mappers: true)"
    )


def check_bad_mappers(bad: list[int], n_mappers: int, round_index: int, skip_bad: bool) -> None:
    """Refuse a round whose mappers ``bad`` returned NaN/inf, unless ``skip_bad`` and some mapper is left.

    The one NaN/inf judgement of local rounds: the driver-side reduce and the
    MPI engine (which flags its ranks with one Allreduce) both call it.
    """
    if bad and not skip_bad:
        raise diverged(round_index, bad[0])
    if bad and len(bad) == n_mappers:
        raise DivergenceError(
            f"round {round_index + 1}: every mapper returned weights containing NaN or inf "
            "(training diverged; try a smaller train.lr)"
        )


def whole_network_rule(rule: str) -> str:
    """The combine rule of a round that trains the whole network: ``split``'s warm-up rounds average."""
    return "average" if rule in ("split", "ist") else rule


class RoundShares:
    """How the good mappers' results of one local round add up to the next state.

    ``good`` are the mappers whose results enter the round (in mapper order)
    and ``n_samples`` their sample counts. For mapper ``m``,
    :meth:`share` gives ``(weights share, optimizer-state share)``, each a
    float64 array of the full vector's shape (the state's as ``(rows,
    n_params)``); :meth:`finish` turns the sums of the shares over the good
    mappers into the next float32 weights and state.

    - Whole network: the share is ``c_m * w_m`` with ``c`` from the rule's
      coefficients (:data:`nnlib.core.combine.COEFFICIENTS`); the finish adds
      ``c_start * start``. The optimizer state is averaged (``1/k`` each).
      A module's floating buffers (BatchNorm's running statistics, after
      its parameters) are a mean whatever the rule: a rule whose
      coefficients are a mean (``average``, ``weighted``) keeps them, the
      sums (``sum``, ``sum_updates``) average them (``1/k``), since a sum of
      variances is no variance.
    - Sub-networks (``payload.subnets``): the share is the mapper's
      sub-network divided by its number of holders, in its places
      (:func:`nnlib.core.split.embed`; ``split.recombine: sum`` divides by 1);
      the finish keeps ``start`` where no good mapper holds a parameter. The
      optimizer state's rows are averaged over their holders in the same way.
    """

    def __init__(self, rule: str, payload: RoundPayload, good: list[int], n_samples: list[float]):
        self.payload, self.good = payload, list(good)
        self.subnets = payload.subnets
        if self.subnets is None:
            coefs, self.start_coef = COEFFICIENTS[whole_network_rule(rule)](n_samples)
            state_coefs, _ = COEFFICIENTS["average"](n_samples)
            self.coef = dict(zip(self.good, coefs, strict=True))
            self.state_coef = dict(zip(self.good, state_coefs, strict=True))
            self.n_weights = payload.model.layers.n_weights  # a module's buffers follow
            is_mean = self.start_coef == 0 and np.isclose(coefs.sum(), 1.0)
            self.buffer_coef = self.coef if is_mean else self.state_coef
            return
        layers = payload.model.mlp  # sub-networks are an MLP's
        self.split = payload.split()
        self.choice = {m: self.subnets.choice(m, layers) for m in self.good}
        self.count = held_count(layers, self.split, [self.choice[m] for m in self.good])
        self.divide = shares_divisor(self.count, "sum" if self.subnets.sum_shared else "average")

    def share(
        self, mapper: int, params: np.ndarray, opt_state: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Mapper ``mapper``'s shares of the weights and the optimizer state (float64)."""
        if self.subnets is None:
            state = None if opt_state is None else self.state_coef[mapper] * opt_state.astype(np.float64)
            weights = params.astype(np.float64)
            share = self.coef[mapper] * weights
            if self.n_weights < len(share):
                share[self.n_weights :] = self.buffer_coef[mapper] * weights[self.n_weights :]
            return share, state
        layers, choice = self.payload.model.mlp, self.choice[mapper]
        state = None
        if opt_state is not None:
            assert self.payload.opt_state is not None  # a mapper's state starts from the round's
            rows = len(state_rows(self.payload.opt_state, layers.n_params))
            state = embed(opt_state.reshape(rows, -1), layers, self.split, choice, self.count)
        return embed(params, layers, self.split, choice, self.divide), state

    def zeros(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The shares of a mapper that adds nothing (a skipped mapper's, in an Allreduce)."""
        p = self.payload
        if p.opt_state is None:
            return np.zeros(p.params.shape), None
        rows = state_rows(p.opt_state, p.params.size)
        return np.zeros(p.params.shape), np.zeros(p.opt_state.shape if self.subnets is None else rows.shape)

    def finish(self, params_total: np.ndarray, state_total: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """The next ``(weights, optimizer state)``, float32, from the sums of the good mappers' shares."""
        p = self.payload
        if self.subnets is None:
            if self.start_coef:
                n = self.n_weights
                params_total = params_total.copy()
                params_total[:n] = params_total[:n] + self.start_coef * p.params[:n].astype(np.float64)
            return params_total.astype(DTYPE), None if state_total is None else state_total.astype(DTYPE)
        params = np.where(self.count > 0, params_total, p.params.astype(np.float64)).astype(DTYPE)
        state = None
        if state_total is not None:
            assert p.opt_state is not None  # the state's shares start from the round's state
            start = state_rows(p.opt_state, p.params.size).astype(np.float64)
            state = np.where(self.count > 0, state_total, start).astype(DTYPE).ravel()
        return params, state


def sum_in_order(shares: list[tuple[np.ndarray, np.ndarray | None]]) -> tuple[np.ndarray, np.ndarray | None]:
    """The shares added up in the order given (mapper order), in float64."""
    params = np.zeros(shares[0][0].shape, np.float64)
    state = None if shares[0][1] is None else np.zeros(shares[0][1].shape, np.float64)
    for p, s in shares:
        params += p
        if state is not None:
            assert s is not None  # every share has a state when the first one has
            state += s
    return params, state


@dataclass(frozen=True)
class RoundReducer:
    """The reduce step of a local round, plain data (a rule name) so any engine can ship it."""

    rule: str
    skip_bad: bool = False

    def shares(self, payload: RoundPayload, good: list[int], n_samples: list[float]) -> RoundShares:
        """The round's :class:`RoundShares` for the good mappers ``good`` of sizes ``n_samples``
        (:attr:`MapperStats.combine_size`: rows, or their total sample weight)."""
        return RoundShares(self.rule, payload, good, n_samples)

    def __call__(self, results: list[MapperResult], payload: RoundPayload) -> Combined:
        """Combine the mappers' results into the next weights.

        Results are combined in mapper order whatever order they arrived in, so
        every engine adds the same numbers in the same order. A result holding
        NaN or inf stops the run, or with ``skip_bad`` is left out of this
        round's combine.
        """
        results = sorted(results, key=lambda res: res.stats.mapper)
        bad = [res.stats.mapper for res in results if not np.isfinite(res.params).all()]
        check_bad_mappers(bad, len(results), payload.round_index, self.skip_bad)
        good = [res for res in results if res.stats.mapper not in bad]
        shares = self.shares(payload, [r.stats.mapper for r in good], [r.stats.combine_size for r in good])
        total = sum_in_order([shares.share(r.stats.mapper, r.params, r.opt_state) for r in good])
        params, opt_state = shares.finish(*total)
        return Combined(params, opt_state, bad)


def sync_coefficients(batch_sizes) -> np.ndarray:
    """Each mapper's coefficient in a synchronous step's mean, ``b_m / sum b`` (float64, ``(mappers,)``): the
    mean over the step's samples. Equal batches give ``1/k`` each, bit for bit."""
    coefs, _ = COEFFICIENTS["weighted"](batch_sizes)
    return coefs


def buffer_coefficients(plan) -> np.ndarray:
    """Each mapper's coefficient in a synchronous round's mean of a module's buffers (BatchNorm's running
    statistics), taken once at the round's end: its shard's share of the training samples,
    ``n_m / sum n`` (float64, ``(mappers,)``), as the averaging combine weights a round's results."""
    return sync_coefficients(plan.shard_sizes)


def gradient_share(grad: np.ndarray, coefficient: float) -> np.ndarray:
    """One mapper's share of a synchronous step's mean gradient: ``coefficient * grad`` in float64."""
    return coefficient * grad.astype(np.float64)


def mean_gradient(grads: list[np.ndarray], coefficients) -> np.ndarray:
    """The mappers' gradients (in mapper order) weighted by ``coefficients`` (:func:`sync_coefficients`) and
    added in order, in their dtype."""
    total = np.zeros(grads[0].shape, np.float64)
    for g, c in zip(grads, coefficients, strict=True):
        total += gradient_share(g, c)
    return total.astype(grads[0].dtype)


def check_mean_gradient(mean: np.ndarray, round_index: int, step: int, flagged: Callable[[], list[int]]) -> None:
    """Stop a synchronous round whose mean gradient holds NaN or inf, naming the mappers ``flagged()`` finds.

    The one NaN/inf judgement of synchronous rounds, on every engine.
    """
    if not np.isfinite(mean).all():
        bad = flagged()
        raise DivergenceError(
            f"round {round_index + 1}, step {step}: mapper(s) {bad or 'unknown'} computed "
            "gradients containing NaN or inf (training diverged; try a smaller train.lr; "
            "synchronous rounds cannot skip a mapper)"
        )


@dataclass
class Server:
    """The server optimizer (``server.lr``, ``server.momentum``) and its state, kept by the driver."""

    rule: ServerSGD
    state: np.ndarray | None

    def __call__(self, payload: RoundPayload, combined: Combined) -> Combined:
        """A local round's combined weights, moved by the server's step from the round's start.

        A module's floating buffers (BatchNorm's running statistics, after its
        parameters) are not weights to step: they keep the combined values.
        """
        if payload.plan.synchronous:
            return combined
        n = payload.model.layers.n_weights
        params = combined.params.copy()
        params[:n] = self.rule.step(
            payload.params[:n], combined.params[:n], None if self.state is None else self.state[:n]
        )
        return replace(combined, params=params)


def make_server(config, params: np.ndarray) -> Server | None:
    """The config's server optimizer; None for plain averaging (``server.lr=1``, ``server.momentum=0``)."""
    if config.server.lr == 1 and config.server.momentum == 0:
        return None
    rule = ServerSGD(config.server.lr, config.server.momentum)
    return Server(rule, rule.init_state(params))
