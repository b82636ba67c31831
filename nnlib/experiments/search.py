"""``nnlib split-search``: the separation study's search over every split of the hidden units.

The study trains the whole network on part of the data, splits the hidden
units into groups, trains each sub-network apart on the rest of the data,
recombines them, and asks how much the choice of split matters. Every
combination here *is* the config's ``combine: split`` run
(:mod:`nnlib.rounds.subnets`) with its sub-network round's groups fixed to
that split, trained by the driver (:mod:`nnlib.driver`) on the config's
engine (``make_engine``: local, Spark or mrjob), as every other run is.
With ``R = train.rounds``:

1. rounds ``0 .. R-2`` train the whole network on the first
   ``split.warmup_fraction`` of every mapper's shard, averaged (the
   warm-up); they run once, and every split starts from their weights;
2. the **baseline**'s last round trains the whole network on the rest of
   every shard: it is ``nnlib run --set combine=split --set
   split.method=none``, bit for bit;
3. every **combination** (a split of each hidden layer into
   ``split.groups`` groups, default 2: every distinct one, or
   ``split.max_combinations`` drawn at random when there are more) runs the
   last round: mapper ``m`` trains sub-network ``m mod G`` on the rest of
   its shard (with ``split.scale: groups`` its output contribution is
   multiplied by G while it trains), the pieces are recombined and scored
   on the test set. Group ``k`` of a layer is the one whose smallest unit
   comes ``k``-th (the order of ``groups`` in the table). The row is the
   final test accuracy and loss of the ``combine: split`` run whose
   ``split.method`` chose those groups in that order, bit for bit (the same
   groups in another order go to other mappers' shards). Every combination
   sees the same data in the same order, so only the split differs.

The combinations run one after another, each one's round on every mapper at
once; the engine places its shards once for the whole search
(:class:`PlacedOnce`).

Writes ``combinations.csv`` (id, groups, test accuracy and loss, seconds,
cross-group coupling: the mean ``|corr|`` of the warmed-up units'
activations across groups, as a run records it in
``split_cross_coupling``, lower is more independent; weight balance: the
lightest group's share of the outgoing weight over the heaviest's),
``search.json`` and three figures: accuracy per combination with the
baseline (the study's Figure 3), a histogram, and accuracy against coupling.

The same module runs a ``combine: split`` run's unsplit baseline after it
(:func:`run_with_baseline`, what ``nnlib run`` calls).
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from nnlib import driver
from nnlib.config import build_config
from nnlib.core.params import LayerSpec, unpack
from nnlib.core.split import (
    Split,
    count_any_splits,
    count_equal_splits,
    cross_coupling,
    enumerate_splits,
    layer_couplings,
)
from nnlib.data.tables import is_row_keyed
from nnlib.engines import make_engine
from nnlib.errors import ConfigError
from nnlib.outputs import RunDir, atomic_write_bytes, csv_bytes, json_bytes
from nnlib.rounds.payload import RoundPayload
from nnlib.rounds.reduce import Server, make_server
from nnlib.util.machine import describe

COLUMNS = ["id", "groups", "test_accuracy", "test_loss", "seconds", "cross_coupling", "weight_balance"]


def _quiet(_message: str) -> None:
    pass


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
    seen: set[tuple] = set()
    out: list[Split] = []
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
    """The number of groups G; refuses settings the search cannot run, in one line (:class:`ConfigError`)."""
    g = config.split.groups or 2
    t = config.train
    if config.engine == "mpi":
        raise ConfigError(
            "split-search runs on engine local, spark or mrjob, got engine=mpi (every MPI rank "
            "runs its own driver loop)"
        )
    if not config.model.hidden:
        raise ConfigError("split-search splits the hidden layers; model.hidden=[] has none")
    for h in config.model.hidden:
        if h < g:
            raise ConfigError(
                f"split-search: model.hidden={config.model.hidden} has a layer with fewer units than split.groups={g}"
            )
        if config.split.equal_sizes and h % g:
            raise ConfigError(
                f"split-search: {h} hidden units do not split into {g} equal groups; set "
                "split.equal_sizes: false or change model.hidden"
            )
    if config.split.method == "none":
        raise ConfigError(
            "split-search trains split networks; split.method must be independence, random or "
            "alternating (alternating: which groups the mappers past the first G take), got none"
        )
    for key, value in (("train.target_accuracy", t.target_accuracy), ("train.patience", t.patience)):
        if value is not None:
            raise ConfigError(
                f"split-search scores every split after all train.rounds; {key} stops a run "
                f"early and must be unset, got {value}"
            )
    if t.sync_rounds >= t.rounds:
        raise ConfigError(
            f"split-search: the sub-networks train in the last round, a local round; "
            f"train.sync_rounds must be < train.rounds ({t.rounds}), got {t.sync_rounds}"
        )
    if is_row_keyed(config.data.source):
        raise ConfigError(
            f"split-search needs the training set in one process (the driver's, to measure the "
            f"units' coupling); data.source {config.data.source} is a Parquet source, read only "
            "by the mappers"
        )
    return g


def search_config(config, groups: int):
    """The run every combination is: ``config`` with ``combine: split`` and ``split.groups: groups``.

    Raises :class:`ConfigError` (one line) when that run cannot be: fewer
    than 2 ``train.rounds``, ``mappers`` not a multiple of ``groups``.
    """
    return build_config(config.to_dict(), ["combine=split", f"split.groups={groups}"], source="split-search")


def prepare_search(config, reader=None, warn=driver.warn) -> driver.Setup:
    """The search's run prepared by :func:`nnlib.driver.prepare` (data loaded and checked, round 0's payload).

    ``reader`` is the engine's. Raises :class:`ConfigError` for settings the
    search cannot run (:func:`check_search`, :func:`search_config`).
    """
    return driver.prepare(search_config(config, check_search(config)), warn, reader)


def unsplit(config):
    """``config`` with ``split.method: none``: the same rounds and data, the last round unsplit."""
    return config.model_copy(update={"split": config.split.model_copy(update={"method": "none"})})


@dataclass(frozen=True)
class SplitRound(driver.Setup):
    """A ``combine: split`` run's setup whose sub-network round trains the groups of ``split``.

    ``split=None`` keeps the groups ``split.method`` chooses. Entering that
    round, it records in ``entered`` the state the round starts from
    (``"payload"``: the warmed-up weights and optimizer state) and the server
    optimizer's state then (``"server_state"``, a copy; None without one).
    """

    split: Split | None = None
    server: Server | None = None
    entered: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, setup: driver.Setup, split: Split | None, server: Server | None) -> SplitRound:
        return cls(**{f.name: getattr(setup, f.name) for f in fields(driver.Setup)}, split=split, server=server)

    def round_payload(self, payload: RoundPayload, r: int, result: driver.RunResult) -> RoundPayload:
        planned = super().round_payload(payload, r, result)
        if planned.subnets is None:
            return planned
        state = None if self.server is None or self.server.state is None else self.server.state.copy()
        self.entered.update(payload=payload, server_state=state)
        if self.split is None:
            return planned
        labels = tuple(tuple(int(u) for u in lab) for lab in self.split.labels())
        return replace(planned, subnets=replace(planned.subnets, labels=labels))


@dataclass(frozen=True)
class Warm:
    """Where every split's last round starts: the state after rounds ``0 .. R-2``."""

    payload: RoundPayload  # the warmed-up weights and optimizer state
    server: Server | None  # the server optimizer, its state as it was then
    couplings: list[np.ndarray]  # per hidden layer, the warmed-up units' |corr|, (units, units)

    def server_copy(self) -> Server | None:
        """A server optimizer a round may step (its state is changed in place)."""
        if self.server is None or self.server.state is None:
            return self.server
        return replace(self.server, state=self.server.state.copy())


def warm_up_and_baseline(engine, setup: driver.Setup, warn=driver.warn) -> tuple[Warm, driver.RunResult]:
    """Rounds ``0 .. R-2`` of ``setup``'s run on ``engine``, then the unsplit baseline's last round.

    Returns the warmed-up state and the baseline's :class:`nnlib.driver.RunResult`
    (``rounds``: every round's rounds.csv row, ``params``: its weights).
    """
    config = setup.config
    server = make_server(config, setup.first.params)
    baseline = SplitRound.of(replace(setup, config=unsplit(config)), None, server)
    result = driver.RunResult(setup.first.params, {})
    result.params = driver.train_rounds(
        engine, baseline, setup.first, 0, None, result, log=_quiet, warn=warn, server=server
    ).params
    payload = baseline.entered["payload"]
    kept = None if server is None else replace(server, state=baseline.entered["server_state"])
    assert setup.data.x_train is not None  # setup() refuses combine=split on a row-keyed source
    couplings = layer_couplings(payload.model, payload.params, setup.data.x_train)
    return Warm(payload, kept, couplings), result


def train_split(engine, setup: driver.Setup, warm: Warm, split: Split, warn=driver.warn) -> driver.RunResult:
    """The last round of ``setup``'s run from ``warm`` with the sub-networks of ``split``, on ``engine``.

    ``result.rounds[-1]`` is that round's rounds.csv row (``test_accuracy``,
    ``test_loss``, ...), ``result.params`` the recombined weights.
    """
    server = warm.server_copy()
    result = driver.RunResult(warm.payload.params, {})
    last = SplitRound.of(setup, split, server)
    result.params = driver.train_rounds(
        engine, last, warm.payload, setup.config.train.rounds - 1, None, result, log=_quiet, warn=warn, server=server
    ).params
    return result


class PlacedOnce:
    """An engine whose shards are placed once for several runs over the same shards.

    The search runs many :func:`nnlib.driver.train_rounds` calls (the
    warm-up, then one per split), and a split run is followed by its
    baseline; each call starts and stops its engine. Through this wrapper
    only the first ``start`` reaches the engine (every call places the same
    shards: one config's data, seed and mappers; only ``split`` settings
    differ) and the engine stops at :meth:`close`. So a Spark engine keeps
    one session and one stage throughout. Everything else is the engine's.
    """

    def __init__(self, engine):
        self._engine, self._started = engine, False

    def __getattr__(self, name: str):
        return getattr(self._engine, name)

    def start(self, source) -> None:
        if not self._started:
            self._engine.start(source)
            self._started = True

    def stop(self) -> None:
        """Nothing: the shards stay for the next split (:meth:`close` stops the engine)."""

    def close(self) -> None:
        self._engine.stop()


@dataclass
class SearchResult:
    out: Path
    rows: list[dict]
    facts: dict
    plots: list[Path]


def split_search(
    config, out: str | Path, quiet: bool = False, log=print, command: str = "", warn=driver.warn
) -> SearchResult:
    """Run the search; write combinations.csv, search.json and the figures into ``out``.

    Raises :class:`ConfigError` before anything is written for settings the
    search cannot run; ``out`` is created only when every split has run.
    """
    import sys

    from tqdm import tqdm

    g = check_search(config)
    run_config = search_config(config, g)
    hidden = tuple(config.model.hidden)
    equal = config.split.equal_sizes
    total = count_splits(hidden, g, equal)
    splits = combinations(hidden, g, equal, config.split.max_combinations, config.seed)
    sizes = "equal groups" if equal else "groups of any size"
    if len(splits) < total:
        log(
            f"split-search: {total} distinct splits of hidden {list(hidden)} into {g} {sizes}; "
            f"{len(splits)} drawn at random (split.max_combinations)"
        )
    else:
        log(f"split-search: {total} distinct splits of hidden {list(hidden)} into {g} {sizes}; all evaluated")
    engine = PlacedOnce(make_engine(run_config, warn))
    rows = []
    try:
        setup = prepare_search(config, engine.reader, warn)
        warm, baseline = warm_up_and_baseline(engine, setup, warn)
        layers = warm.payload.model.mlp
        with tqdm(total=len(splits), unit="split", disable=quiet, file=sys.stderr, desc="split-search") as bar:
            for cid, split in enumerate(splits):
                start = time.perf_counter()
                last = train_split(engine, setup, warm, split, warn).rounds[-1]
                rows.append(
                    {
                        "id": cid,
                        "groups": format_split(split),
                        "test_accuracy": last["test_accuracy"],
                        "test_loss": last["test_loss"],
                        "seconds": time.perf_counter() - start,
                        "cross_coupling": cross_coupling(split, warm.couplings),
                        "weight_balance": weight_balance(split, warm.payload.params, layers),
                    }
                )
                bar.update(1)
    finally:
        engine.close()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "combinations.csv", csv_bytes(COLUMNS, rows))
    r = run_config.train.rounds
    accuracies = [row["test_accuracy"] for row in rows]
    best = max(rows, key=lambda row: row["test_accuracy"])
    worst = min(rows, key=lambda row: row["test_accuracy"])
    facts = {
        "n_warmup": sum(m["n_samples"] for m in baseline.mapper_rows if m["round"] == 1),  # rounds from 1
        "n_rest": sum(m["n_samples"] for m in baseline.mapper_rows if m["round"] == r),
        "n_test": setup.data.n_test,
        "warmup_test_accuracy": baseline.rounds[-2]["test_accuracy"],
        "baseline_test_accuracy": baseline.rounds[-1]["test_accuracy"],
        "baseline_test_loss": baseline.rounds[-1]["test_loss"],
        "engine": config.engine,
        "mappers": run_config.mappers,
        "rounds": r,
        "hidden": list(hidden),
        "groups": g,
        "equal_sizes": equal,
        "distinct_splits": total,
        "evaluated": len(rows),
        "seed": config.seed,
        "mean_test_accuracy": statistics.mean(accuracies),
        "min_test_accuracy": min(accuracies),
        "max_test_accuracy": max(accuracies),
        "beat_baseline": sum(a > baseline.rounds[-1]["test_accuracy"] for a in accuracies),
        "coupling_accuracy_correlation": _correlation([row["cross_coupling"] for row in rows], accuracies),
        "balance_accuracy_correlation": _correlation([row["weight_balance"] for row in rows], accuracies),
        "best": best,
        "worst": worst,
        "config": run_config.to_dict(),
        "machine": describe(),
        "command": command,
    }
    atomic_write_bytes(out / "search.json", json_bytes(facts))  # strict JSON: a NaN correlation is null
    from nnlib.experiments.plots import plot_search

    return SearchResult(out, rows, facts, plot_search(out, rows, facts))


def weight_balance(split: Split, params: np.ndarray, layers: LayerSpec) -> float:
    """How evenly the units' outgoing weight in ``params`` is shared: the lightest group's over the heaviest's.

    A unit's weight is the L2 norm of its row in the next layer's matrix;
    1 means every group carries the same, near 0 that one group holds
    nearly all of it. Averaged over hidden layers.
    """
    arrays = unpack(params, layers)
    ratios = []
    for i, layer in enumerate(split.groups):
        norms = np.linalg.norm(arrays[2 * (i + 1)], axis=1)
        sums = [norms[list(grp)].sum() for grp in layer]
        ratios.append(min(sums) / max(sums) if max(sums) > 0 else 1.0)
    return float(np.mean(ratios))


def _correlation(a: list[float], b: list[float]) -> float | None:
    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


# ---- a combine: split run and its unsplit baseline ---------------------------------------------


def has_unsplit_baseline(config) -> bool:
    """A ``combine: split`` run that splits is followed by its unsplit baseline."""
    return config.combine == "split" and config.split.method != "none"


def run_with_baseline(
    config,
    run_dir: RunDir | None = None,
    engine=None,
    log=print,
    warn=driver.warn,
    resume: bool | RunDir = False,
    on_round=None,
) -> driver.RunResult:
    """:func:`nnlib.driver.run`; after a ``combine: split`` run that splits, its unsplit baseline too.

    The baseline is the same run with ``split.method: none`` (the same rounds
    and data), written to ``DIR/baseline/``; the run's summary gains
    ``baseline_test_accuracy`` and ``baseline_test_loss``. Both run on one
    engine, its shards placed once (:class:`PlacedOnce`). Arguments as
    :func:`nnlib.driver.run`.
    """
    if not has_unsplit_baseline(config):
        return driver.run(config, run_dir, engine=engine, log=log, warn=warn, resume=resume, on_round=on_round)
    engine = PlacedOnce(engine or make_engine(config, warn))
    try:
        result = driver.run(config, run_dir, engine=engine, log=log, warn=warn, resume=resume, on_round=on_round)
        log("the unsplit baseline: the same rounds and data with split.method=none")
        out = RunDir(run_dir.path / "baseline", overwrite=True) if run_dir is not None else None
        done = driver.run(unsplit(config), out, engine=engine, log=_quiet, warn=_quiet)
    finally:
        engine.close()
    result.summary.update(
        baseline_test_accuracy=done.summary["final_test_accuracy"], baseline_test_loss=done.summary["final_test_loss"]
    )
    if run_dir is not None:
        run_dir.write_summary(result.summary)
    return result
