"""``combine: split``: the separation study's one-shot method, as rounds of the one driver loop.

A run with ``combine: split`` and ``train.rounds = R`` (the rounds are the
schedule's, :meth:`nnlib.rounds.schedule.Schedule.sub_networks`; this module
chooses the groups):

- rounds ``0 .. R-2`` train the whole network on the first
  ``split.warmup_fraction`` of every shard, averaged as usual (the
  whole-network phase);
- round ``R-1`` splits the hidden units into ``G = split.groups`` groups
  (default: one per mapper), each mapper trains its sub-network on the rest
  of its shard, and the pieces go back (:func:`nnlib.core.split.recombine`):
  each slice copied back, what several mappers hold (the output bias, or a
  sub-network two mappers train) averaged, or summed with
  ``split.recombine: sum``.

``split.method`` chooses the groups from the warmed-up network:

- ``independence``: a spectral cut of the units' activation coupling
  (``|corr|`` over up to :data:`nnlib.core.split.COUPLING_SAMPLES` training samples), so the
  most coupled units share a group (:func:`nnlib.core.split.independence_split`);
- ``random``: a seeded random split;
- ``alternating``: the independence groups, with mappers beyond the first
  ``G`` taking the groups in a cyclic pairing across layers
  (:func:`nnlib.core.split.mapper_choice`), so cross-group weights are
  trained too;
- ``none``: no split (every mapper trains the whole network): the unsplit
  baseline on the same data schedule.
"""

from __future__ import annotations

import numpy as np

from nnlib.core.split import Split, cross_coupling, independence_split, layer_couplings, random_split, whole
from nnlib.rounds.payload import RoundPayload, SubnetPlan


def n_groups(config) -> int:
    return 1 if config.split.method == "none" else (config.split.groups or config.mappers)


def choose_split(config, payload: RoundPayload, x: np.ndarray) -> tuple[Split, float]:
    """The split of the last round, from the warmed-up weights, and its cross-group coupling."""
    hidden = payload.model.mlp.sizes[1:-1]
    coupled = layer_couplings(payload.model, payload.params, x)
    method, g = config.split.method, n_groups(config)
    if method == "none":
        split = whole(hidden)
    elif method == "random":
        split = random_split(hidden, g, np.random.default_rng([config.seed, 0x5B17]))
    else:
        split = independence_split(coupled, g)
    return split, cross_coupling(split, coupled)


def split_subnets(config, payload: RoundPayload, x: np.ndarray) -> tuple[SubnetPlan, dict]:
    """The sub-networks of ``combine: split``'s last round, chosen from the warmed-up weights in ``payload``,
    and what to record about the split (the schedule says which round that is)."""
    split, coupling = choose_split(config, payload, x)
    plan = SubnetPlan(
        split.n_groups,
        config.split.scale == "groups" and split.n_groups > 1,
        tuple(tuple(int(u) for u in lab) for lab in split.labels()),
        config.split.method == "alternating",
        config.split.recombine == "sum",
    )
    return plan, {
        "split_method": config.split.method,
        "split_groups": [[list(g) for g in layer] for layer in split.groups],
        "split_cross_coupling": coupling,
    }
