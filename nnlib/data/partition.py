"""Split the training set into ``mappers`` shards: random, stratified, contiguous, or skewed (non-IID).

Deterministic in ``(labels, mappers, scheme, seed, alpha)``. The allowed
schemes are checked by the config (``data.partition``); ``alpha`` is
``data.skew_alpha``.
"""

from __future__ import annotations

import numpy as np

from nnlib.errors import DataError

DIRICHLET_DRAWS = 100  # skewed schemes redraw until no shard is empty, at most this many times


def partition(y: np.ndarray, mappers: int, scheme: str, seed: int, alpha: float = 0.5) -> list[np.ndarray]:
    """Return ``mappers`` sorted index arrays that together cover ``range(len(y))`` once.

    - ``random``: a seeded permutation cut into near-equal parts;
    - ``stratified``: each class shuffled and dealt round-robin, so every shard
      keeps the class proportions (shard sizes differ by at most one per class);
    - ``contiguous``: consecutive blocks in file order;
    - ``label_skew``: each class's samples shared out in proportions drawn
      from ``Dirichlet(alpha, ..., alpha)`` over the mappers (small ``alpha``:
      each mapper sees few classes; large: close to ``stratified``);
    - ``quantity_skew``: a random permutation cut at sizes proportional to one
      ``Dirichlet(alpha)`` draw (classes mixed, shard sizes uneven).

    The skewed schemes draw again while a shard would be empty.
    """
    n = len(y)
    rng = np.random.default_rng([seed, 0x5A4D])
    if scheme in ("label_skew", "quantity_skew"):
        return _skewed(y, mappers, scheme, alpha, rng)
    if scheme == "contiguous":
        parts = np.array_split(np.arange(n), mappers)
    elif scheme == "random":
        parts = np.array_split(rng.permutation(n), mappers)
    else:  # stratified
        buckets: list[list[np.ndarray]] = [[] for _ in range(mappers)]
        offset = 0
        for label in np.unique(y):
            members = rng.permutation(np.flatnonzero(y == label))
            for k in range(mappers):
                buckets[(k + offset) % mappers].append(members[k::mappers])
            offset += len(members)  # start the next class where this one stopped dealing
        parts = [np.concatenate(b) if b else np.empty(0, np.int64) for b in buckets]
    return [np.sort(p) for p in parts]


def _cut(members: np.ndarray, shares: np.ndarray) -> list[np.ndarray]:
    """``members`` cut into ``len(shares)`` consecutive runs with sizes in proportion to ``shares``."""
    bounds = np.round(np.cumsum(shares) * len(members)).astype(int)[:-1]
    return np.split(members, bounds)


def _skewed(y: np.ndarray, mappers: int, scheme: str, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
    classes = [np.flatnonzero(y == label) for label in np.unique(y)]
    for _ in range(DIRICHLET_DRAWS):
        if scheme == "quantity_skew":
            parts = _cut(rng.permutation(len(y)), rng.dirichlet(np.full(mappers, alpha)))
        else:
            pieces = [_cut(rng.permutation(members), rng.dirichlet(np.full(mappers, alpha))) for members in classes]
            parts = [np.concatenate([p[k] for p in pieces]) for k in range(mappers)]
        if min(len(p) for p in parts) > 0:
            return [np.sort(p) for p in parts]
    raise DataError(
        f"data.partition={scheme}: with data.skew_alpha={alpha}, {DIRICHLET_DRAWS} Dirichlet draws "
        f"all left a shard of the {mappers} empty ({len(y)} training samples); "
        "raise data.skew_alpha or use fewer mappers"
    )


def shard_sizes(y: np.ndarray, mappers: int, scheme: str, seed: int, alpha: float = 0.5) -> list[int]:
    """Samples in each shard (at most one shard per sample)."""
    return [len(p) for p in partition(y, min(mappers, len(y)), scheme, seed, alpha)]
