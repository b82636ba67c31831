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

from nnlib.core.mlp import ModelSpec, NumpyMLP
from nnlib.core.params import LayerSpec


@dataclass(frozen=True)
class Split:
    """``groups[l][g]``: the sorted unit indices of group ``g`` in hidden layer ``l``."""

    groups: tuple[tuple[tuple[int, ...], ...], ...]

    @property
    def n_groups(self) -> int:
        return len(self.groups[0]) if self.groups else 1

    def choice(self, g) -> tuple[int, ...]:
        """A sub-network's group in each hidden layer: ``g`` itself, or group ``g`` in every layer."""
        return tuple(g) if isinstance(g, tuple) else (int(g),) * len(self.groups)

    def sub_layers(self, layers: LayerSpec, g) -> LayerSpec:
        """Layer sizes of sub-network ``g``: the inputs, its group of every hidden layer, the outputs."""
        return LayerSpec(
            (
                layers.sizes[0],
                *(len(layer[c]) for layer, c in zip(self.groups, self.choice(g), strict=True)),
                layers.sizes[-1],
            )
        )

    def labels(self) -> list[np.ndarray]:
        """Per hidden layer, each unit's group (a compact form to ship)."""
        out = []
        for layer in self.groups:
            lab = np.empty(sum(len(grp) for grp in layer), np.int64)
            for g, grp in enumerate(layer):
                lab[list(grp)] = g
            out.append(lab)
        return out

    @classmethod
    def from_labels(cls, labels, n_groups: int) -> Split:
        return cls(
            tuple(
                tuple(tuple(int(u) for u in np.flatnonzero(np.asarray(lab) == g)) for g in range(n_groups))
                for lab in labels
            )
        )


def check_splittable(hidden: tuple[int, ...], n_groups: int) -> None:
    """Every hidden layer must have at least one unit per group."""
    if n_groups < 1:
        raise ValueError(f"the number of groups must be >= 1, got {n_groups}")
    for layer, units in enumerate(hidden):
        if units < n_groups:
            raise ValueError(f"hidden layer {layer} has {units} units, fewer than the {n_groups} groups")


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


def sub_indices(layers: LayerSpec, split: Split, g) -> np.ndarray:
    """Positions in the full flat vector of sub-network ``g``'s parameters, in its own flat order.

    ``g`` is a group (the same in every hidden layer) or a tuple of groups,
    one per hidden layer (the ``alternating`` sub-networks).
    """
    return _sub_indices(layers, split, split.choice(g))


@lru_cache(maxsize=256)
def _sub_indices(layers: LayerSpec, split: Split, choice: tuple[int, ...]) -> np.ndarray:
    n = layers.n_layers
    units = [np.arange(layers.sizes[0])]
    units += [np.asarray(layer[c], np.int64) for layer, c in zip(split.groups, choice, strict=True)]
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


def slice_params(full: np.ndarray, layers: LayerSpec, split: Split, g) -> np.ndarray:
    """Sub-network ``g``'s flat vector (a copy)."""
    return full[sub_indices(layers, split, g)]


def held_count(layers: LayerSpec, split: Split, groups) -> np.ndarray:
    """How many of the sub-networks ``groups`` (a list, repeats counted) hold each parameter, ``(n_params,)``."""
    count = np.zeros(layers.n_params, np.int64)
    for g in groups:
        count[sub_indices(layers, split, g)] += 1
    return count


def embed(sub: np.ndarray, layers: LayerSpec, split: Split, g, count: np.ndarray) -> np.ndarray:
    """Sub-network ``g``'s share of the recombined vector: ``sub / count`` in its places, 0 elsewhere (float64).

    Summing the shares of every sub-network (in one process, or with one
    MPI Allreduce) gives each held parameter the mean of its holders' values.
    ``sub`` may have leading axes (the optimizer state's rows, ``(rows, sub
    size)``); the share then has the same leading axes.
    """
    idx = sub_indices(layers, split, g)
    out = np.zeros((*sub.shape[:-1], layers.n_params), np.float64)
    out[..., idx] = sub.astype(np.float64) / count[idx]
    return out


def shares_divisor(count: np.ndarray, shared: str = "average") -> np.ndarray:
    """What each held value is divided by: its number of holders (``average``), or 1 (``sum``)."""
    return count if shared == "average" else np.minimum(count, 1)


def recombine(
    start: np.ndarray, pieces: list[tuple], layers: LayerSpec, split: Split, shared: str = "average"
) -> np.ndarray:
    """The full vector after training sub-networks: ``pieces`` is a list of ``(g, flat vector)``.

    Each parameter becomes the mean of the values the pieces hold for it
    (one value for most; the output bias, or a sub-network trained by two
    mappers, is averaged); a parameter no piece holds keeps its value in
    ``start``. ``shared="sum"`` sums what several pieces hold instead.
    ``start`` and the pieces may have the same leading axes (the optimizer
    state's rows), recombined row by row. Summed in float64, in the pieces'
    order; returned in ``start``'s dtype.
    """
    count = held_count(layers, split, [g for g, _ in pieces])
    divide = shares_divisor(count, shared)
    total = np.zeros(start.shape, np.float64)
    for g, sub in pieces:
        total += embed(sub, layers, split, g, divide)
    return np.where(count > 0, total, start.astype(np.float64)).astype(start.dtype)


# ---- choosing a split --------------------------------------------------------------------------


def mapper_choice(mapper: int, n_groups: int, n_hidden: int, alternating: bool = False) -> tuple[int, ...]:
    """The groups (one per hidden layer) that ``mapper`` trains.

    Mappers ``0..G-1`` train the diagonal sub-networks (group ``g`` in every
    layer). With ``alternating``, mapper ``m`` in pass ``j = m // G`` takes
    group ``(m + j*l) mod G`` in hidden layer ``l``: a cyclic pairing of
    groups across layers, so pass ``j`` trains the blocks between group
    ``a`` of one layer and group ``a + j`` of the next, which the diagonal
    sub-networks never hold (the study's "alternating which group you take
    from"). Without it, mapper ``m`` trains group ``m mod G`` everywhere.
    """
    shift = mapper // n_groups if alternating else 0
    return tuple((mapper + shift * layer) % n_groups for layer in range(n_hidden))


def unit_coupling(activations: np.ndarray) -> np.ndarray:
    """``|corr|`` between every two hidden units over samples, ``(h, h)``; a constant unit couples to none."""
    a = activations.astype(np.float64)
    a = a - a.mean(axis=0)
    norm = np.sqrt((a * a).sum(axis=0))
    live = norm > 1e-12
    corr = np.zeros((a.shape[1], a.shape[1]))
    corr[np.ix_(live, live)] = np.abs((a[:, live].T @ a[:, live]) / np.outer(norm[live], norm[live]))
    np.fill_diagonal(corr, 0.0)
    return corr


COUPLING_SAMPLES = 2000  # activations are correlated over at most this many samples


def layer_couplings(model: ModelSpec, params: np.ndarray, x: np.ndarray) -> list[np.ndarray]:
    """Each hidden layer's :func:`unit_coupling` on (up to :data:`COUPLING_SAMPLES` rows of) ``x``.

    ``model`` is the whole network's :class:`nnlib.core.mlp.ModelSpec`; its
    output scale does not change the hidden activations.
    """
    return [unit_coupling(h) for h in NumpyMLP(model).hidden_activations(params, x[:COUPLING_SAMPLES])]


def cross_coupling(split: Split, couplings: list[np.ndarray]) -> float:
    """Mean ``|corr|`` over pairs of units in different groups of the same layer (lower: more independent)."""
    values = []
    for label, corr in zip(split.labels(), couplings, strict=True):
        cross = label[:, None] != label[None, :]
        values.append(corr[cross].mean() if cross.any() else 0.0)
    return float(np.mean(values))


def independence_split(couplings: list[np.ndarray], n_groups: int) -> Split:
    """Group the most coupled units together: a spectral cut of each layer's ``|corr|`` graph.

    The units are ordered by the Fiedler vector (the eigenvector of the
    second-smallest eigenvalue of the graph Laplacian ``D - A``, ``A`` the
    ``|corr|`` matrix), which places strongly coupled units next to each
    other, and the order is cut into ``n_groups`` groups of near-equal size
    (a ratio cut, as in spectral clustering of weight graphs).
    """
    layers = []
    for corr in couplings:
        check_splittable((corr.shape[0],), n_groups)
        laplacian = np.diag(corr.sum(axis=1)) - corr
        _, vectors = np.linalg.eigh(laplacian)
        fiedler = vectors[:, 1] if corr.shape[0] > 1 else np.zeros(1)
        order = np.argsort(fiedler, kind="stable")
        layers.append(tuple(tuple(sorted(int(u) for u in part)) for part in np.array_split(order, n_groups)))
    return Split(tuple(layers))


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
