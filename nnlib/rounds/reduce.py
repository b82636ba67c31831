"""The reduce of a local round: how the mappers' results become the next weights.

Results are combined in mapper order whatever order they arrived in, so every
engine adds the same numbers in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nnlib.core.combine import combine
from nnlib.core.optim import state_rows
from nnlib.core.split import recombine
from nnlib.errors import DivergenceError
from nnlib.rounds.payload import Combined, MapperResult, RoundPayload


def diverged(round_index: int, mapper: int) -> DivergenceError:
    return DivergenceError(f"round {round_index}: mapper {mapper} returned weights containing NaN or inf "
                           "(training diverged; try a smaller train.lr, or train.skip_bad_mappers: true)")


def check_bad_mappers(bad: list[int], n_mappers: int, round_index: int, skip_bad: bool) -> None:
    """Refuse a round whose mappers ``bad`` returned NaN/inf, unless ``skip_bad`` and some mapper is left.

    The one NaN/inf judgement of local rounds: the driver-side reduce and the
    MPI engine (which flags its ranks with one Allreduce) both call it.
    """
    if bad and not skip_bad:
        raise diverged(round_index, bad[0])
    if bad and len(bad) == n_mappers:
        raise DivergenceError(f"round {round_index}: every mapper returned weights containing NaN or inf "
                              "(training diverged; try a smaller train.lr)")


@dataclass(frozen=True)
class RoundReducer:
    """The reduce step of a local round, plain data (a rule name) so any engine can ship it."""

    rule: str
    skip_bad: bool = False

    def __call__(self, results: list[MapperResult], payload: RoundPayload) -> Combined:
        """Combine the mappers' results into the next weights.

        Results are combined in mapper order whatever order they arrived in, so
        every engine adds the same numbers in the same order. Optimizer states
        are averaged. A result holding NaN or inf stops the run, or with
        ``skip_bad`` is left out of this round's combine.
        """
        results = sorted(results, key=lambda res: res.stats.mapper)
        bad = [res.stats.mapper for res in results if not np.isfinite(res.params).all()]
        check_bad_mappers(bad, len(results), payload.round_index, self.skip_bad)
        good = [res for res in results if res.stats.mapper not in bad]
        if payload.subnets is not None:
            return self._recombine(good, payload, bad)
        counts = [res.stats.n_samples for res in good]
        params = combine(whole_network_rule(self.rule), [res.params for res in good], counts, payload.params)
        opt_state = None
        if payload.opt_state is not None:
            opt_state = combine("average", [res.opt_state for res in good], counts)
        return Combined(params, opt_state, bad)

    @staticmethod
    def _recombine(good: list[MapperResult], payload: RoundPayload, bad: list[int]) -> Combined:
        """Sub-networks: each copied back, what several hold (the output bias) averaged, the rest kept."""
        layers, split = payload.model.layers, payload.split()
        choices = [payload.subnets.choice(r.stats.mapper, layers) for r in good]
        shared = "sum" if payload.subnets.sum_shared else "average"
        params = recombine(payload.params, [(c, r.params) for c, r in zip(choices, good)], layers, split, shared)
        opt_state = None
        if payload.opt_state is not None:  # each buffer (row) of the state, like the weights
            start = state_rows(payload.opt_state, payload.params.size)
            opt_state = recombine(start, [(c, r.opt_state.reshape(len(start), -1)) for c, r in zip(choices, good)],
                                  layers, split).ravel()
        return Combined(params, opt_state, bad)


def whole_network_rule(rule: str) -> str:
    """The combine rule of a round that trains the whole network: ``split``'s warm-up rounds average."""
    return "average" if rule in ("split", "ist") else rule
