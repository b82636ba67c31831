"""``nnlib split-search``: the separation study's search over every split of the hidden units.

The study trains the whole network on part of the data, splits the hidden
units into groups, trains each sub-network apart on the rest of the data,
recombines them, and asks how much the choice of split matters. Here:

1. the training set is shuffled (seeded) and its first
   ``split.warmup_fraction`` trains the whole network for
   ``train.local_epochs`` epochs (the warm-up);
2. the **baseline** goes on training the whole network on the rest for
   ``train.local_epochs`` epochs;
3. every **combination** (a split of each hidden layer into
   ``split.groups`` groups, default 2: every distinct one, or
   ``split.max_combinations`` drawn at random when there are more) trains
   each of its sub-networks from the warmed-up weights on the rest for
   ``train.local_epochs`` epochs (with ``split.scale: groups`` the
   sub-network's output contribution is multiplied by G while it trains),
   then recombines them (:func:`nnlib.core.split.recombine`) and is scored
   on the test set. Every combination sees the same data in the same order,
   so only the split differs.

Each combination is an independent task: on ``engine: local`` they run one
after another, on ``engine: spark`` one Spark task per combination across
the executors. Writes ``combinations.csv`` (id, groups, test accuracy and
loss, seconds, cross-group coupling: the mean ``|corr|`` of the warmed-up
units' activations across groups, lower is more independent; weight
balance: the lightest group's share of the outgoing weight over the
heaviest's),
``search.json`` and three figures: accuracy per combination with the
baseline (the study's Figure 3), a histogram, and accuracy against coupling.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from nnlib.core.backends import get_backend
from nnlib.core.mlp import ModelSpec
from nnlib.core.optim import SGD, Adam
from nnlib.core.params import init_params
from nnlib.core.split import (Split, count_any_splits, count_equal_splits, cross_coupling, enumerate_splits,
                              layer_couplings, recombine, slice_params)
from nnlib.core.train import LocalSchedule, local_sgd
from nnlib.data.dataset import load_dataset
from nnlib.errors import ConfigError
from nnlib.util.machine import describe
from nnlib.outputs import atomic_write_bytes, csv_bytes
from nnlib.rounds.payload import make_optimizer, model_spec
from nnlib.util.threads import one_blas_thread

COLUMNS = ["id", "groups", "test_accuracy", "test_loss", "seconds", "cross_coupling", "weight_balance"]


@dataclass(frozen=True)
class SearchData:
    """Everything a combination's task needs (broadcast once on Spark)."""

    model: ModelSpec
    backend: str
    warm: np.ndarray          # the warmed-up whole network
    x_rest: np.ndarray
    y_rest: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    schedule: LocalSchedule
    lr: float
    optimizer: SGD | Adam
    seed: int
    scale: bool


def _train(data: SearchData, params: np.ndarray, model: ModelSpec, stream: int) -> np.ndarray:
    """``params`` trained on the rest of the data from a fresh optimizer state; batch order from ``stream``."""
    optimizer, rng = data.optimizer, np.random.default_rng([data.seed, 0x5EA, stream])
    update = local_sgd(get_backend(data.backend, model), params, optimizer.init_state(params), optimizer,
                       data.x_rest, data.y_rest, data.schedule, data.lr, rng)
    return update.params


def evaluate_combination(data: SearchData, cid: int, split: Split) -> dict:
    """Train every sub-network of ``split`` on the rest of the data, recombine, score on the test set."""
    start = time.perf_counter()
    layers = data.model.layers
    pieces = []
    with one_blas_thread():
        for g in range(split.n_groups):
            model = replace(data.model, layers=split.sub_layers(layers, g),
                            output_scale=float(split.n_groups) if data.scale else 1.0)
            pieces.append((g, _train(data, slice_params(data.warm, layers, split, g), model, g)))
        params = recombine(data.warm, pieces, layers, split)
        loss, accuracy = get_backend(data.backend, data.model).evaluate(params, data.x_test, data.y_test)
    return {"id": cid, "groups": format_split(split), "test_accuracy": accuracy, "test_loss": loss,
            "seconds": time.perf_counter() - start}


def format_split(split: Split) -> str:
    """``"0 1 2 3 | 4 5 6 7"``: groups by ``|``, hidden layers by ``/``."""
    return " / ".join(" | ".join(" ".join(map(str, grp)) for grp in layer) for layer in split.groups)


def _canonical(layer) -> tuple:
    return tuple(sorted((tuple(sorted(grp)) for grp in layer), key=lambda grp: grp[0]))


def count_splits(hidden: tuple[int, ...], g: int, equal: bool) -> int:
    """Distinct combinations: the product over hidden layers of the per-layer closed form."""
    return math.prod(count_equal_splits(h, g) if equal else count_any_splits(h, g) for h in hidden)


def combinations(hidden: tuple[int, ...], g: int, equal: bool, limit: int, seed: int) -> list[Split]:
    """Every distinct split (in enumeration order), or ``limit`` distinct ones drawn at random."""
    total = count_splits(hidden, g, equal)
    if total <= limit:
        per_layer = [list(enumerate_splits(h, g, equal)) for h in hidden]
        return [Split(tuple(combo)) for combo in itertools.product(*per_layer)]
    rng = np.random.default_rng([seed, 0x5A3])
    seen, out = set(), []
    while len(out) < limit:
        layers = []
        for h in hidden:
            if equal:
                labels = np.repeat(np.arange(g), h // g)[rng.permutation(h)]
            else:  # a random labelling with every group used
                labels = np.concatenate([np.arange(g), rng.integers(0, g, h - g)])[rng.permutation(h)]
            layers.append(_canonical([np.flatnonzero(labels == k).tolist() for k in range(g)]))
        key = tuple(layers)
        if key not in seen:
            seen.add(key)
            out.append(Split(key))
    return out


def check_search(config) -> int:
    """The number of groups; refuses settings the search cannot run, in one line."""
    g = config.split.groups or 2
    if config.engine not in ("local", "spark"):
        raise ConfigError(f"split-search runs on engine local or spark, got engine={config.engine}")
    if not config.model.hidden:
        raise ConfigError("split-search splits the hidden layers; model.hidden=[] has none")
    for h in config.model.hidden:
        if h < g:
            raise ConfigError(f"split-search: model.hidden={config.model.hidden} has a layer with fewer units "
                              f"than split.groups={g}")
        if config.split.equal_sizes and h % g:
            raise ConfigError(f"split-search: {h} hidden units do not split into {g} equal groups; set "
                              "split.equal_sizes: false or change model.hidden")
    return g


def prepare_search(config) -> tuple[SearchData, dict, list[np.ndarray]]:
    """Load and cut the data, warm up the whole network, train the baseline; the shared facts."""
    data = load_dataset(config.data, config.seed)
    if data.rows is not None:
        raise ConfigError(f"split-search needs the training set in one process; data.source {config.data.source} "
                          "is a Parquet source, read only by the mappers")
    order = np.random.default_rng([config.seed, 0x5EA]).permutation(len(data.y_train))
    n_warm = max(1, round(config.split.warmup_fraction * len(order)))
    warm_idx, rest_idx = order[:n_warm], order[n_warm:]
    spec = model_spec(config, data)
    t = config.train
    schedule = LocalSchedule(t.batch_size, t.local_epochs)
    optimizer = make_optimizer(config)
    start = init_params(spec.layers, config.seed)
    backend = get_backend(config.model.backend, spec)
    with one_blas_thread():
        warm = local_sgd(backend, start, optimizer.init_state(start), optimizer, data.x_train[warm_idx],
                         data.y_train[warm_idx], schedule, t.lr, np.random.default_rng([config.seed, 0x3A7])).params
    shared = SearchData(spec, config.model.backend, warm, data.x_train[rest_idx], data.y_train[rest_idx],
                        data.x_test, data.y_test, schedule, t.lr, optimizer, config.seed,
                        config.split.scale == "groups")
    with one_blas_thread():
        baseline = _train(shared, warm, spec, 0)
        warm_loss, warm_acc = backend.evaluate(warm, data.x_test, data.y_test)
        base_loss, base_acc = backend.evaluate(baseline, data.x_test, data.y_test)
    facts = {"n_warmup": int(n_warm), "n_rest": int(len(rest_idx)), "n_test": int(len(data.y_test)),
             "warmup_test_accuracy": warm_acc, "baseline_test_accuracy": base_acc,
             "baseline_test_loss": base_loss}
    return shared, facts, layer_couplings(spec, warm, data.x_train[warm_idx])


def _run_tasks(config, shared: SearchData, splits: list[Split], bar) -> list[dict]:
    """Every combination's row, in id order: in this process, or one Spark task each."""
    if config.engine == "local":
        rows = []
        for cid, split in enumerate(splits):
            rows.append(evaluate_combination(shared, cid, split))
            bar.update(1)
        return rows
    from nnlib.engines.spark.engine import get_or_create_session

    session, created = get_or_create_session(config.spark.master, config.spark.app_name, config.spark.log_level)
    sc = session.sparkContext
    try:
        data = sc.broadcast(shared)
        chunk = max(1, 4 * sc.defaultParallelism)  # a few waves per progress update
        rows, numbered = [], list(enumerate(splits))
        for lo in range(0, len(numbered), chunk):
            items = numbered[lo:lo + chunk]
            rows += sc.parallelize(items, len(items)).map(
                lambda item: evaluate_combination(data.value, item[0], item[1])).collect()
            bar.update(len(items))
        data.destroy()
        return sorted(rows, key=lambda r: r["id"])
    finally:
        if created:
            session.stop()


@dataclass
class SearchResult:
    out: Path
    rows: list[dict]
    facts: dict
    plots: list[Path]


def split_search(config, out: str | Path, quiet: bool = False, log=print, command: str = "") -> SearchResult:
    """Run the search; write combinations.csv, search.json and the figures into ``out``."""
    import sys

    from tqdm import tqdm

    g = check_search(config)
    hidden = tuple(config.model.hidden)
    equal = config.split.equal_sizes
    total = count_splits(hidden, g, equal)
    splits = combinations(hidden, g, equal, config.split.max_combinations, config.seed)
    sizes = "equal groups" if equal else "groups of any size"
    if len(splits) < total:
        log(f"split-search: {total} distinct splits of hidden {list(hidden)} into {g} {sizes}; "
            f"{len(splits)} drawn at random (split.max_combinations)")
    else:
        log(f"split-search: {total} distinct splits of hidden {list(hidden)} into {g} {sizes}; all evaluated")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shared, facts, coupled = prepare_search(config)
    with tqdm(total=len(splits), unit="split", disable=quiet, file=sys.stderr, desc="split-search") as bar:
        rows = _run_tasks(config, shared, splits, bar)
    for row, split in zip(rows, splits):
        row["cross_coupling"] = cross_coupling(split, coupled)
        row["weight_balance"] = weight_balance(split, shared)
    atomic_write_bytes(out / "combinations.csv", csv_bytes(COLUMNS, rows))
    accuracies = [r["test_accuracy"] for r in rows]
    best, worst = max(rows, key=lambda r: r["test_accuracy"]), min(rows, key=lambda r: r["test_accuracy"])
    facts.update({"engine": config.engine, "hidden": list(hidden), "groups": g, "equal_sizes": equal,
                  "distinct_splits": total, "evaluated": len(rows), "seed": config.seed,
                  "mean_test_accuracy": statistics.mean(accuracies), "min_test_accuracy": min(accuracies),
                  "max_test_accuracy": max(accuracies),
                  "beat_baseline": sum(a > facts["baseline_test_accuracy"] for a in accuracies),
                  "coupling_accuracy_correlation": _correlation([r["cross_coupling"] for r in rows], accuracies),
                  "balance_accuracy_correlation": _correlation([r["weight_balance"] for r in rows], accuracies),
                  "best": best, "worst": worst, "config": config.to_dict(), "machine": describe(),
                  "command": command})
    atomic_write_bytes(out / "search.json", (json.dumps(facts, indent=2) + "\n").encode())
    from nnlib.experiments.plots import plot_search

    return SearchResult(out, rows, facts, plot_search(out, rows, facts))


def weight_balance(split: Split, data: SearchData) -> float:
    """How evenly the warmed-up units' outgoing weight is shared: the lightest group's over the heaviest's.

    A unit's weight is the L2 norm of its row in the next layer's matrix;
    1 means every group carries the same, near 0 that one group holds
    nearly all of it. Averaged over hidden layers.
    """
    from nnlib.core.params import unpack

    arrays = unpack(data.warm, data.model.layers)
    ratios = []
    for l, layer in enumerate(split.groups):
        norms = np.linalg.norm(arrays[2 * (l + 1)], axis=1)
        sums = [norms[list(grp)].sum() for grp in layer]
        ratios.append(min(sums) / max(sums) if max(sums) > 0 else 1.0)
    return float(np.mean(ratios))


def _correlation(a: list[float], b: list[float]) -> float | None:
    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])
