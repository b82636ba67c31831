"""Split the training set into ``mappers`` shards: random, stratified or contiguous.

Deterministic in ``(labels, mappers, scheme, seed)``. The allowed schemes are
checked by the config (``data.partition``).
"""

from __future__ import annotations

import numpy as np

def partition(y: np.ndarray, mappers: int, scheme: str, seed: int) -> list[np.ndarray]:
    """Return ``mappers`` sorted index arrays that together cover ``range(len(y))`` once.

    - ``random``: a seeded permutation cut into near-equal parts;
    - ``stratified``: each class shuffled and dealt round-robin, so every shard
      keeps the class proportions (shard sizes differ by at most one per class);
    - ``contiguous``: consecutive blocks in file order.
    """
    n = len(y)
    rng = np.random.default_rng([seed, 0x5A4D])
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


def shard_sizes(y: np.ndarray, mappers: int, scheme: str, seed: int) -> list[int]:
    """Samples in each shard (at most one shard per sample)."""
    return [len(p) for p in partition(y, min(mappers, len(y)), scheme, seed)]
