"""Sub-networks by neuron groups: cut an MLP's hidden units into disjoint groups, slice, recombine.

Pure numpy over the one flat parameter vector of :mod:`nnlib.core.params`.

A :class:`Split` cuts every hidden layer's units into ``G`` disjoint groups.
Sub-network ``g`` keeps group ``g`` of every hidden layer, all inputs and all
outputs; for a weight matrix ``W`` of shape ``(fan_in, fan_out)``:

- input layer -> hidden 1: ``W[:, G1_g]`` and bias ``b[G1_g]``;
- hidden l -> hidden l+1: the block ``W[G_l_g, G_l+1_g]`` and ``b[G_l+1_g]``;
- last hidden -> output: ``W[G_L_g, :]`` and the whole output bias.

So every parameter is held by exactly one sub-network except the output bias,
which all hold, and the cross-group blocks of hidden-to-hidden matrices, which
none holds (they keep their value; re-drawing the split every round, as
Independent Subnet Training does, trains them in turn).

:func:`sub_indices` gives, for sub-network ``g``, the positions in the full
vector of its parameters, in the sub-network's own flat order, so
``full[idx]`` *is* the sub-network's flat vector and ``full[idx] = sub``
puts it back. :func:`recombine` copies every sub-network back and averages
what several hold (the output bias); what none holds keeps ``start``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from math import comb, factorial

import numpy as np

from nnlib.core.params import LayerSpec


@dataclass(frozen=True)
class Split:
    """``groups[l][g]``: the sorted unit indices of group ``g`` in hidden layer ``l``."""

    groups: tuple[tuple[tuple[int, ...], ...], ...]

    @property
    def n_groups(self) -> int:
        return len(self.groups[0]) if self.groups else 1

    def sub_layers(self, layers: LayerSpec, g: int) -> LayerSpec:
        """Layer sizes of sub-network ``g``: the inputs, group ``g`` of every hidden layer, the outputs."""
        return LayerSpec((layers.sizes[0], *(len(layer[g]) for layer in self.groups), layers.sizes[-1]))


def check_splittable(hidden: tuple[int, ...], n_groups: int) -> None:
    """Every hidden layer must have at least one unit per group."""
    if n_groups < 1:
        raise ValueError(f"the number of groups must be >= 1, got {n_groups}")
    for l, units in enumerate(hidden):
        if units < n_groups:
            raise ValueError(f"hidden layer {l} has {units} units, fewer than the {n_groups} groups")


def random_split(hidden: tuple[int, ...], n_groups: int, rng: np.random.Generator) -> Split:
    """Shuffle each hidden layer's units and cut them into ``n_groups`` groups of near-equal size."""
    check_splittable(hidden, n_groups)
    layers = []
    for units in hidden:
        perm = rng.permutation(units)
        layers.append(tuple(tuple(sorted(int(u) for u in part)) for part in np.array_split(perm, n_groups)))
    return Split(tuple(layers))


def round_split(hidden: tuple[int, ...], n_groups: int, seed: int, round_index: int) -> Split:
    """The seeded random split of one round: the same on the driver and every mapper, on any engine."""
    return random_split(hidden, n_groups, np.random.default_rng([seed, round_index, 0x157]))


def whole(hidden: tuple[int, ...]) -> Split:
    """The trivial split: one group holding every unit (the sub-network is the whole network)."""
    return Split(tuple((tuple(range(units)),) for units in hidden))


def sub_indices(layers: LayerSpec, split: Split, g: int) -> np.ndarray:
    """Positions in the full flat vector of sub-network ``g``'s parameters, in its own flat order."""
    return _sub_indices(layers, split, g)


@lru_cache(maxsize=256)
def _sub_indices(layers: LayerSpec, split: Split, g: int) -> np.ndarray:
    n = layers.n_layers
    units = [np.arange(layers.sizes[0])]
    units += [np.asarray(layer[g], np.int64) for layer in split.groups]
    units.append(np.arange(layers.sizes[-1]))
    parts = []
    for i in range(n):
        (w_start, _, (_, fan_out)), (b_start, _, _) = layers.offsets[2 * i], layers.offsets[2 * i + 1]
        rows, cols = units[i], units[i + 1]
        parts.append((w_start + rows[:, None] * fan_out + cols[None, :]).ravel())
        parts.append(b_start + cols)
    out = np.concatenate(parts)
    out.setflags(write=False)
    return out


def slice_params(full: np.ndarray, layers: LayerSpec, split: Split, g: int) -> np.ndarray:
    """Sub-network ``g``'s flat vector (a copy)."""
    return full[sub_indices(layers, split, g)]


def held_count(layers: LayerSpec, split: Split, groups) -> np.ndarray:
    """How many of the sub-networks ``groups`` hold each parameter, ``(n_params,)`` int."""
    count = np.zeros(layers.n_params, np.int64)
    for g in groups:
        count[sub_indices(layers, split, g)] += 1
    return count


def embed(sub: np.ndarray, layers: LayerSpec, split: Split, g: int, count: np.ndarray) -> np.ndarray:
    """Sub-network ``g``'s share of the recombined vector: ``sub / count`` in its places, 0 elsewhere (float64).

    Summing the shares of every sub-network (in one process, or with one
    MPI Allreduce) gives each held parameter the mean of its holders' values.
    """
    idx = sub_indices(layers, split, g)
    out = np.zeros(layers.n_params, np.float64)
    out[idx] = sub.astype(np.float64) / count[idx]
    return out


def recombine(start: np.ndarray, subs: dict[int, np.ndarray], layers: LayerSpec, split: Split) -> np.ndarray:
    """The full vector after training the sub-networks ``subs`` (group -> flat vector).

    Each parameter becomes the mean of the values the sub-networks in
    ``subs`` hold for it (one value for all but the output bias); a
    parameter none of them holds keeps its value in ``start``. Summed in
    float64, in group order; returned in ``start``'s dtype.
    """
    count = held_count(layers, split, subs)
    total = np.zeros(layers.n_params, np.float64)
    for g in sorted(subs):
        total += embed(subs[g], layers, split, g, count)
    return np.where(count > 0, total, start.astype(np.float64)).astype(start.dtype)


# ---- counting and enumerating splits of one layer ---------------------------------------------

def count_equal_splits(n: int, g: int) -> int:
    """Splits of ``n`` units into ``g`` unlabeled groups of equal size ``n/g``: ``n! / ((n/g)!^g g!)``."""
    if n % g:
        raise ValueError(f"{n} units do not split into {g} equal groups")
    return factorial(n) // (factorial(n // g) ** g * factorial(g))


def count_any_splits(n: int, g: int) -> int:
    """Splits of ``n`` units into ``g`` non-empty unlabeled groups: the Stirling number S(n, g)."""
    return sum((-1) ** j * comb(g, j) * (g - j) ** n for j in range(g + 1)) // factorial(g)


def enumerate_splits(n: int, g: int, equal: bool = True):
    """Every split of units ``0..n-1`` into ``g`` unlabeled groups, each a tuple of sorted tuples.

    Each split is produced once: the groups are ordered by their smallest
    unit (unit 0 is always in the first group). ``equal=True`` keeps only
    groups of size ``n/g``; otherwise any non-empty sizes.
    """
    if equal and n % g:
        raise ValueError(f"{n} units do not split into {g} equal groups")
    size = n // g

    def place(unit: int, groups: list[list[int]]):
        if unit == n:
            if len(groups) == g:
                yield tuple(tuple(grp) for grp in groups)
            return
        if n - unit < g - len(groups):  # too few units left to open the remaining groups
            return
        for grp in groups:
            if not equal or len(grp) < size:
                grp.append(unit)
                yield from place(unit + 1, groups)
                grp.pop()
        if len(groups) < g:
            groups.append([unit])
            yield from place(unit + 1, groups)
            groups.pop()

    yield from place(0, [])
