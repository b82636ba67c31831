"""The one driver loop, shared by every engine.

For each round of the :class:`nnlib.rounds.schedule.Schedule`: send the weights
(the payload) to every shard, let the engine run the round (a local round:
train then combine; a synchronous round: average gradients every step),
evaluate on the held-out test set, record the timings, checkpoint. *When*
things happen is the schedule's; the arithmetic is :mod:`nnlib.core`'s;
where the work runs is the engine's (:mod:`nnlib.engines.base`).

Where the mappers run outside the driver's process, round r is scored and
checkpointed on a second driver thread while the mappers train round r+1
(:func:`overlaps_scoring`); the weights are the same either way.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from nnlib.config import Config
from nnlib.core.backends import get_backend
from nnlib.data.dataset import Dataset, ShardSource, run_dataset
from nnlib.data.storage import resolved as resolved_storage
from nnlib.engines import make_engine
from nnlib.engines.base import Engine
from nnlib.errors import ConfigError, DataError, DivergenceError, NnlibError
from nnlib.model.file import ModelFile, model_file
from nnlib.outputs import RunDir, config_digest
from nnlib.rounds.mapper import evaluate_rows, peak_rss_mb, total_scores
from nnlib.rounds.payload import Combined, MapperStats, RoundPayload, first_payload, ist_subnets
from nnlib.rounds.reduce import RoundReducer, Server, make_server
from nnlib.rounds.schedule import Schedule
from nnlib.rounds.subnets import split_subnets
from nnlib.util.machine import describe
from nnlib.util.stop import StopRequested, stop_agreed
from nnlib.util.threads import one_blas_thread
from nnlib.util.timing import timed


def warn(message: str) -> None:
    """A one-line warning for a setting that is legal but probably not meant."""
    print(f"nnlib: warning: {message}", file=sys.stderr)


@dataclass
class RunResult:
    params: np.ndarray
    summary: dict
    rounds: list[dict] = field(default_factory=list)
    mapper_rows: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # {"round", "mapper"} left out by skip_bad_mappers
    extra: dict = field(default_factory=dict)  # facts a combine rule records in the summary (the split)
    model: ModelFile | None = None  # the trained model with its preprocessing and classes (model.npz)


def check_against_data(config: Config, data: Dataset, sizes: list[int], warn=warn) -> None:
    """Refuse settings the data cannot support; warn about pointless ones (only once nothing is refused, so a
    warning never contradicts the error that follows it)."""
    n_train = data.n_train
    if config.mappers > n_train:
        raise ConfigError(f"mappers must be <= the number of training samples ({n_train}), got {config.mappers}")
    if min(sizes) == 0:
        empty = sizes.index(0)
        raise DataError(
            f"data.source {config.data.source}: shard {empty} holds no training rows ({n_train} "
            f"training rows drawn over mappers={config.mappers} leave {sizes.count(0)} shard(s) empty); "
            "use fewer mappers, or a larger data set"
        )
    if data.missing_classes:
        shown = ", ".join(map(str, data.missing_classes[:8])) + (", ..." if len(data.missing_classes) > 8 else "")
        warn(
            f"data.source {config.data.source}: {len(data.missing_classes)} class(es) in 0..{data.n_classes - 1} "
            f"never occur in the training set ({shown}); the model still gets an output for each (labels are "
            "class indices 0..K-1)"
        )
    if config.mappers == 1 and config.combine != "average":
        warn(f"mappers=1: combine={config.combine} has a single result to combine")
    smallest = min(sizes)
    if config.train.batch_size > smallest:
        warn(
            f"train.batch_size={config.train.batch_size} is larger than the smallest shard "
            f"({smallest} samples): each epoch is a single batch"
        )
    if config.combine == "sum" and config.mappers > 1 and config.train.rounds > 1:
        warn(
            f"combine=sum over {config.train.rounds} rounds scales the weights by about {config.mappers} "
            "each round; combine=sum_updates sums the changes instead"
        )
    sync = config.has_sync_rounds
    global_batch = config.mappers * config.train.batch_size
    if sync and global_batch > n_train:
        warn(
            f"the global batch (mappers x train.batch_size = {global_batch}) is larger than the training "
            f"set ({n_train} samples)"
        )
    elif sync and global_batch > 1024:
        warn(
            f"the global batch (mappers x train.batch_size = {global_batch}) is past 1024, "
            "where larger batches stop paying"
        )
    if not sync and (config.train.lr_scaling != "none" or config.train.warmup_epochs):
        warn(
            "train.lr_scaling and train.warmup_epochs apply to synchronous rounds only "
            "(combine=gradient or train.sync_rounds); they have no effect here"
        )
    elif config.train.warmup_epochs and config.train.lr_scaling == "none":
        warn("train.warmup_epochs has no effect without train.lr_scaling=linear (it ramps up to the scaled rate)")


def config_as_run(config: Config, engine: Engine) -> dict:
    """config.yaml's tree: the config, a Spark Connect token hidden, with the settings the engine really used
    (``spark.master``: the master its session ran on, which spark-submit may have given)."""
    tree = config.shareable_dict()
    for key, value in getattr(engine, "used_settings", dict)().items():
        section, name = key.split(".")
        tree[section][name] = value
    return tree


def with_absolute_paths(config: Config) -> Config:
    """Make file data sources absolute, so workers with another working directory find them (URIs stay)."""
    update = {}
    for key in ("source", "test_source", "labels", "test_labels"):
        value = getattr(config.data, key)
        if value is not None and (key != "source" or value not in ("digits", "synthetic")) and "://" not in value:
            update[key] = str(Path(value).expanduser().absolute())  # a URI (hdfs://, s3a://) stays as it is
    return config.model_copy(update={"data": config.data.model_copy(update=update)})


def round_row(r: int, stats: list[MapperStats], times: dict, seconds: float, scores: dict, lr: float) -> dict:
    """One row of rounds.csv for round number ``r`` (1-based, as printed); ``scores`` holds ``test_loss``,
    ``test_accuracy`` (and ``val_*`` with a validation set)."""
    mapper_secs = [s.train_seconds for s in stats]
    finite = [s for s in stats if np.isfinite(s.train_loss)] or stats  # a skipped mapper's loss is NaN
    n_seen = sum(s.n_samples for s in finite)
    return {
        "round": r,
        **scores,
        "lr": lr,
        "train_loss": sum(s.train_loss * s.n_samples for s in finite) / n_seen,
        "seconds": seconds,
        **{f"{k}_seconds": times.get(k, 0.0) for k in ("broadcast", "wait", "combine", "evaluate")},
        "max_mapper_seconds": max(mapper_secs),
        "median_mapper_seconds": statistics.median(mapper_secs),
        "overhead_seconds": max(times.get("wait", 0.0) - max(mapper_secs), 0.0),
        "result_bytes": sum(s.result_bytes for s in stats),
    }


def mapper_rows(r: int, stats: list[MapperStats]) -> list[dict]:
    """The rows of mapper_times.csv for round number ``r`` (1-based, as printed)."""
    return [{"round": r, **dataclasses.asdict(s)} for s in stats]


def resume_state(
    config: Config,
    run_dir: RunDir,
    start: RoundPayload,
    result: RunResult,
    server: Server | None = None,
    fingerprint: tuple[tuple[str, str], ...] = (),
) -> tuple[int, RoundPayload]:
    """``(rounds done, payload holding their weights)`` from the newest checkpoint of ``run_dir``.

    The tables and skipped mappers of the finished rounds go into ``result``,
    the server optimizer's state into ``server``. Without a checkpoint:
    ``(0, start)``. ``fingerprint`` is the data's as read now
    (``Dataset.fingerprint``); an input whose rows differ from the ones the
    checkpoint recorded is refused, naming it.
    """
    ckpt = run_dir.latest_checkpoint()
    if ckpt is None:
        return 0, start
    if ckpt.fingerprint is not None:
        recorded, now = dict(ckpt.fingerprint), dict(fingerprint)
        for key in sorted(recorded.keys() | now.keys()):
            if recorded.get(key) != now.get(key):
                raise ConfigError(
                    f"--resume {run_dir.path}: {key} {getattr(config.data, key.split('.')[-1], '')} "
                    f"has changed since the checkpoint {ckpt.path.name} (its rows now hash to "
                    f"{now.get(key, 'nothing')}, the run read {recorded.get(key, 'nothing')}); "
                    "resume on the data the run started with, or start a new run"
                )
    if ckpt.config_digest is not None and ckpt.config_digest != config_digest(config):
        raise ConfigError(
            f"--resume {run_dir.path}: the checkpoint {ckpt.path.name} was written by a run with "
            f"another config than {run_dir.path / 'config.yaml'} (in a key a resume may not change); "
            "it belongs to another run: start this one afresh with --overwrite"
        )
    if ckpt.params.shape != start.params.shape:
        raise ConfigError(
            f"--resume: checkpoint {ckpt.path} holds {ckpt.params.size} parameters, the model has {start.params.size}"
        )
    if (None if ckpt.opt_state is None else ckpt.opt_state.size) != (
        None if start.opt_state is None else start.opt_state.size
    ):
        raise ConfigError(
            f"--resume: checkpoint {ckpt.path} holds another optimizer's state than "
            f"train.optimizer={config.train.optimizer}, train.momentum={config.train.momentum}"
        )
    if ckpt.rounds_done > config.train.rounds:
        raise ConfigError(
            f"--resume: {run_dir.path} already has {ckpt.rounds_done} rounds; "
            f"train.rounds must be >= {ckpt.rounds_done}, got {config.train.rounds}"
        )
    if ckpt.rounds_done == config.train.rounds and run_dir.file("summary.json").is_file():
        raise ConfigError(
            f"--resume: {run_dir.path} finished its {ckpt.rounds_done} rounds already; to train "
            f"on, raise train.rounds (--set train.rounds={ckpt.rounds_done + 5}, say)"
        )
    result.rounds, result.mapper_rows = run_dir.read_tables(ckpt.rounds_done)
    result.skipped = [{"round": int(r), "mapper": int(m)} for r, m in ckpt.skipped]
    if server is not None and server.state is not None:
        if ckpt.server_state is None or ckpt.server_state.shape != server.state.shape:
            raise ConfigError(
                f"--resume: checkpoint {ckpt.path} holds no server momentum for "
                f"server.momentum={config.server.momentum}"
            )
        server.state[:] = ckpt.server_state
    return ckpt.rounds_done, replace(start, params=ckpt.params, opt_state=ckpt.opt_state)


@dataclass
class TrainedRound:
    """A round trained and reduced on the engine, not yet scored."""

    payload: RoundPayload  # the round's payload: its index, plan and rate
    combined: Combined  # the next state
    stats: list[MapperStats]  # the mappers' stats, in mapper order
    times: dict  # broadcast, wait, combine (and evaluate, once scored), seconds
    seconds: float  # the round's time so far on the driver's critical path


def train_round(
    engine: Engine, payload: RoundPayload, reducer: RoundReducer, warn=warn, server: Server | None = None
) -> TrainedRound:
    """Train and reduce one round on ``engine`` (a local or a synchronous round, then the server step)."""
    start = time.perf_counter()
    times: dict[str, float] = {}
    if payload.plan.synchronous:
        combined, stats = engine.sync_round(payload, times)
    else:
        combined, stats = engine.round(payload, reducer, times)
    if server is not None:
        with timed(times, "combine"):
            combined = server(payload, combined)
    for mapper in combined.skipped:
        warn(
            f"round {payload.round_index + 1}: mapper {mapper} returned NaN or inf; its result was left out "
            "(train.skip_bad_mappers)"
        )
    return TrainedRound(payload, combined, stats, times, time.perf_counter() - start)


def score_round(trained: TrainedRound, evaluate, in_line: bool = True) -> dict:
    """The round's rounds.csv row: ``evaluate(weights)``'s scores, the timings and the mappers' figures.

    ``in_line``: the scoring is on the critical path and counts in the row's
    ``seconds``; scored while the next round trains, it counts only in
    ``evaluate_seconds``. Raises :class:`DivergenceError` when a score is
    not finite.
    """
    start = time.perf_counter()
    with timed(trained.times, "evaluate"):
        scores = evaluate(trained.combined.params)
    round_number = trained.payload.round_index + 1
    for name, value in scores.items():
        if not np.isfinite(value):  # finite weights too large to score: never a run that ends with exit 0
            raise DivergenceError(
                f"round {round_number}: {name} is {value} (the weights are finite but "
                "too large to score; training diverged: try a smaller train.lr)"
            )
    seconds = trained.seconds + (time.perf_counter() - start if in_line else 0.0)
    return round_row(round_number, trained.stats, trained.times, seconds, scores, trained.payload.plan.lr)


def run_round(
    engine: Engine, payload: RoundPayload, reducer: RoundReducer, evaluate, warn=warn, server: Server | None = None
) -> tuple[Combined, dict, list[MapperStats]]:
    """One round on ``engine``, scored in line: ``(the next state, the rounds.csv row, the mappers' stats)``."""
    trained = train_round(engine, payload, reducer, warn, server)
    return trained.combined, score_round(trained, evaluate), trained.stats


def summarize(
    config: Config,
    data: Dataset,
    payload: RoundPayload,
    result: RunResult,
    wall_seconds: float,
    resumed_after: int | None,
) -> dict:
    """summary.json of a finished run."""
    last = result.rounds[-1]
    task = {"task": "regression", "targets": list(data.target_names)} if data.regression else {}
    return {
        **{f"final_{k}": last[k] for k in final_keys(last)},
        "wall_seconds": wall_seconds,
        **task,
        "engine": config.engine,
        "mappers": config.mappers,
        "combine": config.combine,
        "rounds": config.train.rounds,
        "backend": config.model.backend,
        "n_train": data.n_train,
        "n_test": data.n_test,
        "n_val": data.n_val,
        "n_features": data.n_features,
        "n_classes": data.n_classes,
        **payload.model.layers.describe(),
        "rounds_run": len(result.rounds),
        "train_seconds": sum(row["seconds"] for row in result.rounds),
        "driver_peak_rss_mb": peak_rss_mb(),
        "skipped_mappers": result.skipped,
        "resumed_after_round": resumed_after,
        **result.extra,
        "machine": describe(),
    }


def final_keys(row: dict) -> tuple[str, ...]:
    """The rounds.csv keys summary.json reports as ``final_*``: a classifier's, or a regressor's."""
    if "test_r2" in row:
        return ("test_r2", "test_rmse", "test_mae", "test_loss", "train_loss")
    return ("test_accuracy", "test_loss", "train_loss")


def model_line(described: dict, backend: str) -> str:
    """The model's one line at start: its kind, shape and parameter count."""
    if described["model_type"] == "cnn":
        c, h, w = described["image_shape"]
        shape = f"{c}x{h}x{w} image, conv channels {described['channels']}, {described['kernel']}x{described['kernel']}"
    elif described["model_type"] == "module":
        shape = f"{described['module']}, input {'x'.join(map(str, described['input_shape']))}"
    else:
        shape = "layers " + "-".join(str(s) for s in described["layer_sizes"])
    return f"model: {described['model_type']} ({shape}), {described['n_params']:,} parameters, {backend} backend"


@dataclass(frozen=True)
class Setup:
    """Everything a run derives from its config before the first round."""

    config: Config
    data: Dataset
    schedule: Schedule
    first: RoundPayload  # round 0's payload: initial weights, fresh optimizer state
    reducer: RoundReducer

    def round_payload(self, payload: RoundPayload, r: int, result: RunResult) -> RoundPayload:
        """Round ``r``'s payload, as the schedule's plan says: its rates, its share of the data, its
        sub-networks, and whether the optimizer state restarts."""
        plan = self.schedule.plan(r)
        subnets = None
        if plan.sub_networks == "ist":
            subnets = ist_subnets(self.config)
        elif plan.sub_networks == "split":
            assert self.data.x_train is not None  # setup() refuses combine=split on a row-keyed source
            subnets, facts = split_subnets(self.config, payload, self.data.x_train)
            result.extra.update(facts)
        payload = replace(payload, plan=plan, subnets=subnets)
        if plan.restart_optimizer and payload.opt_state is not None:
            payload = replace(payload, opt_state=payload.optimizer.init_state(payload.params))
        return payload

    def evaluate(self, params: np.ndarray, engine: Engine | None = None) -> dict[str, float]:
        """Loss and accuracy of ``params`` on the held-out test set, and on the validation set if there is one.

        Sets the driver holds are scored here; sets the mappers keep (a large
        Parquet source's, past ``spark.collect_held_out_mb``) are scored by ``engine``'s
        mappers, each on its part, and the sums added up.
        """
        data = self.data
        if data.regression or data.weighted:  # a row-keyed source: w_train stays with the mappers
            return self.evaluate_sums(params)
        scores = {}
        if self.data.rows is not None and self.data.rows.scored_by_mappers:
            if engine is None:
                raise ValueError("the mappers hold the held-out rows: pass the engine that scores them")
            scores = total_scores(engine.score(self.config.model.backend, self.first.model, params))
        backend = get_backend(self.config.model.backend, self.first.model)
        if self.data.x_test is not None and self.data.y_test is not None:
            scores.update(
                zip(
                    ("test_loss", "test_accuracy"),
                    evaluate_rows(backend, params, self.data.x_test, self.data.y_test),
                    strict=True,
                )
            )
        if self.data.x_val is not None and self.data.y_val is not None:
            scores.update(
                zip(
                    ("val_loss", "val_accuracy"),
                    evaluate_rows(backend, params, self.data.x_val, self.data.y_val),
                    strict=True,
                )
            )
        return scores

    def evaluate_sums(self, params: np.ndarray) -> dict[str, float]:
        """Scores of a regression run (loss, RMSE, MAE, R²) or of a weighted one, from summed block statistics
        (:mod:`nnlib.core.metrics`): the loss in training units, the metrics in the targets' own units."""
        data, scores = self.data, {}
        backend = get_backend(self.config.model.backend, self.first.model)
        for name, x, y, w, raw in (
            ("test", data.x_test, data.y_test, data.w_test, data.y_test_raw),
            ("val", data.x_val, data.y_val, data.w_val, data.y_val_raw),
        ):
            if x is None or y is None:
                continue
            scores.update(set_scores(backend, self.first.model, params, name, x, y, w, data, raw))
        return scores


def set_scores(
    backend,
    spec,
    params: np.ndarray,
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    w: np.ndarray | None,
    data: Dataset,
    raw: np.ndarray | None = None,
) -> dict[str, float]:
    """``{name}_loss`` and ``{name}_accuracy``, or under regression ``{name}_r2``, ``_rmse``, ``_mae`` and
    ``_loss``, of ``params`` on ``(x, y)`` weighted by ``w``, scored ``EVAL_ROWS`` rows at a time."""
    from nnlib.core import metrics
    from nnlib.model.model import aligned_logits, regression_sums
    from nnlib.rounds.mapper import EVAL_ROWS

    if not data.regression:
        parts = [
            backend.score(
                params, x[lo : lo + EVAL_ROWS], y[lo : lo + EVAL_ROWS], None if w is None else w[lo : lo + EVAL_ROWS]
            )
            for lo in range(0, len(y), EVAL_ROWS)
        ]
        done = metrics.finish_classification(metrics.total(parts))
        return {f"{name}_loss": done.loss, f"{name}_accuracy": done.accuracy}
    # the outputs in aligned blocks and the sums over the whole set, as the model file's regression_metrics
    # computes them: nnlib predict on the run's test set gives its RMSE to the bit
    z = aligned_logits(backend, params, x)
    fit = metrics.finish_regression(
        regression_sums(spec, z, y if raw is None else raw, w, data.target_mean, data.target_std)
    )
    return {f"{name}_r2": fit.r2, f"{name}_rmse": fit.rmse, f"{name}_mae": fit.mae, f"{name}_loss": fit.loss}


@dataclass
class EarlyStopping:
    """``train.patience``: stop after ``patience`` rounds without a lower validation loss; keep the best weights."""

    patience: int
    best_loss: float = float("inf")
    best_round: int = -1
    best_params: np.ndarray | None = None
    stale: int = 0

    def update(self, round_index: int, val_loss: float, params: np.ndarray | None) -> bool:
        """Record round ``round_index``; True when the run should stop."""
        if val_loss < self.best_loss:
            self.best_loss, self.best_round, self.best_params, self.stale = val_loss, round_index, params, 0
        else:
            self.stale += 1
        return self.stale >= self.patience

    def replay(self, rows: list[dict]) -> None:
        """Catch up on a resumed run's finished rounds (their weights are gone: only the count and best loss)."""
        for row in rows:
            self.update(row["round"] - 1, row["val_loss"], None)  # rows number rounds from 1


def prepare(config: Config, warn=warn, reader=None) -> Setup:
    """Load the data, check the config against it, build the schedule and round 0's payload.

    ``reader`` is how the engine reads a row-keyed (Parquet) source (the
    engine's ``reader``; default pyarrow in this process).
    """
    config = with_absolute_paths(config)
    data = run_dataset(config, reader)
    if data.rows is not None and config.combine == "split":
        raise ConfigError(
            f"combine=split needs the training set on the driver (to couple the neurons); "
            f"data.source {config.data.source} is a Parquet source, read only by the mappers"
        )
    sizes = data.shard_sizes(config.mappers, config.data.partition, config.seed, config.data.skew_alpha)
    check_against_data(config, data, sizes, warn)
    schedule = Schedule.from_config(config, sizes)
    return Setup(
        config,
        data,
        schedule,
        first_payload(config, data, schedule),
        RoundReducer(config.combine, config.train.skip_bad_mappers),
    )


def overlaps_scoring(engine: Engine, setup: Setup) -> bool:
    """Whether round r is scored, and its tables and checkpoint written, while the mappers train round r+1.

    Only where no mapper trains in the driver's process (``engine.mappers_elsewhere``: Spark, mrjob's
    local and cluster runners), with ``train.overlap_scoring`` on, and when no decision waits on the
    scores: ``train.target_accuracy`` and ``train.patience`` score in line, so a run stops after the round
    that reached its target, never one round late; so do held-out sets the mappers keep (the engine's
    mappers score them).
    """
    config = setup.config
    mapper_scored = setup.data.rows is not None and setup.data.rows.scored_by_mappers
    return (
        engine.mappers_elsewhere
        and config.train.overlap_scoring
        and config.train.target_accuracy is None
        and config.train.patience is None
        and not mapper_scored
    )


# The driver's own numbers during the rounds (scoring, the reduce, choosing sub-networks) run on one BLAS thread,
# as the mappers' do. After a call on more threads, OpenBLAS's idle worker thread spins for about 0.1 s; where
# the mappers share the driver's cores (Spark local[N], MPI's rank 0, the local engine) that spin is taken from
# a mapper: 112-125 ms of the Spark driver's CPU a round against 35-38 ms on one thread (bench/README.md,
# "Where the cores go"). One thread also scores the same bits on every engine.
@one_blas_thread()
def train_rounds(
    engine: Engine,
    setup: Setup,
    payload: RoundPayload,
    first_round: int,
    run_dir: RunDir | None,
    result: RunResult,
    log=print,
    warn=warn,
    on_round=None,
    server: Server | None = None,
    on_started=None,
) -> RoundPayload:
    """Run rounds ``first_round ..`` of the schedule on ``engine``; return the last round's state.

    ``on_started``, if given, is called once the engine holds its shards (every
    worker has read and checked its data): the run writes its config then, so
    an input error found by a worker leaves nothing behind.
    """
    config = setup.config
    stopping = None if config.train.patience is None else EarlyStopping(config.train.patience)
    if stopping is not None:
        stopping.replay(result.rounds)
    evaluate = lambda params: setup.evaluate(params, engine)  # noqa: E731
    # scoring and writing round r while the mappers train round r+1 (see overlaps_scoring)
    scorer = ThreadPoolExecutor(1, thread_name_prefix="nnlib-score") if overlaps_scoring(engine, setup) else None
    pending: Future | None = None  # the previous round's row and checkpoint, on the scorer

    def record(trained: TrainedRound, skipped: list[dict], server_state, in_line: bool) -> dict:
        """Score the round, add its rows to the tables, write them and the checkpoint, say it."""
        r = trained.payload.round_index
        row = score_round(trained, evaluate, in_line)
        result.rounds.append(row)
        result.mapper_rows += mapper_rows(r + 1, trained.stats)
        if run_dir is not None:  # tables, then the checkpoint (a write that fails keeps the last good one)
            run_dir.write_round(
                result.rounds,
                result.mapper_rows,
                skipped,
                trained.combined.params,
                trained.combined.opt_state,
                server_state,
                setup.data.fingerprint,
                config_digest(config),
            )
        if on_round is not None:
            on_round(row)
        if "test_r2" in row:
            log(
                f"round {r + 1}/{config.train.rounds}  test_r2 {row['test_r2']:.4f}  test_rmse {row['test_rmse']:.4g}  "
                f"test_mae {row['test_mae']:.4g}  test_loss {row['test_loss']:.4f}  "
                f"train_loss {row['train_loss']:.4f}  {row['seconds']:.2f}s"
            )
        else:
            log(
                f"round {r + 1}/{config.train.rounds}  test_acc {row['test_accuracy']:.4f}  "
                f"test_loss {row['test_loss']:.4f}  train_loss {row['train_loss']:.4f}  {row['seconds']:.2f}s"
            )
        return row

    try:
        try:
            source = ShardSource.of_run(config, setup.data.rows)
            if config.data.shard_storage == "auto":  # memory or disk, by the shards' size: said in one line
                source = replace(source, data=resolved_storage(config, setup.data, engine, log))
            engine.start(source)
            if on_started is not None:
                on_started()
            for r in range(first_round, config.train.rounds):
                payload = setup.round_payload(payload, r, result)
                trained = train_round(engine, payload, setup.reducer, warn, server)
                payload = replace(payload, params=trained.combined.params, opt_state=trained.combined.opt_state)
                result.skipped += [{"round": r + 1, "mapper": m} for m in trained.combined.skipped]
                # what the checkpoint holds, as of this round: the next round's server step changes the state
                snapshot = (
                    list(result.skipped),
                    None if server is None or server.state is None else server.state.copy(),
                )
                if scorer is not None:
                    waited = time.perf_counter()
                    if pending is not None:
                        pending.result()  # the previous round's row and checkpoint; raises what it raised
                    trained.seconds += time.perf_counter() - waited
                    pending = scorer.submit(record, trained, *snapshot, False)
                else:
                    row = record(trained, *snapshot, True)
                    target = config.train.target_accuracy
                    if target is not None and row["test_accuracy"] >= target:
                        log(f"reached train.target_accuracy={target} after round {r + 1}; stopping")
                        break
                    if stopping is not None and stopping.update(r, row["val_loss"], payload.params):
                        log(
                            f"no lower validation loss for train.patience={stopping.patience} rounds; stopping "
                            f"after round {r + 1}, keeping round {stopping.best_round + 1}'s weights"
                        )
                        break
                # a signal asked for a stop (SIGTERM): every process stops after the same round, its checkpoint
                # written
                if r + 1 < config.train.rounds and (signum := stop_agreed(engine.all_ok)) is not None:
                    if pending is not None:
                        pending.result()
                    raise StopRequested(signum, r + 1)
            if pending is not None:
                pending.result()
        finally:
            if scorer is not None:
                scorer.shutdown(wait=True)  # whatever happened, the last trained round's row and checkpoint
    except DivergenceError as exc:
        if run_dir is not None and (ckpt := run_dir.latest_checkpoint()) is not None:
            raise DivergenceError(f"{exc}; the last good checkpoint is {ckpt.path}") from None
        raise
    finally:
        engine.stop()
    if stopping is not None:
        result.extra.update(best_round=stopping.best_round + 1, best_val_loss=stopping.best_loss)
        if stopping.best_params is not None and stopping.best_round < len(result.rounds) - 1:
            best = result.rounds[stopping.best_round]
            result.extra.update({f"final_{k}": best[k] for k in final_keys(best)})
            payload = replace(payload, params=stopping.best_params)
    if result.rounds:
        log(kept_weights_line(result.rounds, stopping))
    return payload


def kept_weights_line(rounds: list[dict], stopping: EarlyStopping | None) -> str:
    """The run's line on which round's weights the model (``model.npz``) holds: with ``train.patience`` the
    round of the lowest validation loss, whether or not patience ended the run, else the last round trained.
    ``rounds``: the run's rounds.csv rows (a resumed run's earlier ones included)."""
    last = rounds[-1]["round"]
    if stopping is None:
        return f"model: round {last}'s weights (the last round; no train.patience, so no validation choice)"
    best = stopping.best_round + 1
    loss = f"validation loss {stopping.best_loss:.4f}"
    if best == last:
        return f"model: round {last}'s weights (the last round, with the lowest {loss})"
    if stopping.best_params is None:  # the best round was trained before a resume: its weights are not held here
        return (
            f"model: round {last}'s weights (the last round); round {best} had the lowest {loss} but was "
            f"trained before the resume, and its weights are not kept"
        )
    later = f"round {last}" if best + 1 == last else f"rounds {best + 1}-{last}"
    return f"model: round {best}'s weights (the lowest {loss}); {later} did not lower it"


def run(
    config: Config,
    run_dir: RunDir | None = None,
    engine: Engine | None = None,
    log=print,
    warn=warn,
    resume: bool | RunDir = False,
    on_round=None,
) -> RunResult:
    """Train as ``config`` says on ``engine`` (default: the config's); write outputs to ``run_dir`` if given.

    After every round the weights and optimizer state are checkpointed to
    ``run_dir/checkpoints/``; ``resume=True`` continues from the newest one and
    ends with exactly the weights of an uninterrupted run (``resume`` a
    ``RunDir``: from that one's, read and not written, as an MPI rank other
    than 0 does; no checkpoint there: a fresh start). ``log`` receives
    the progress lines and ``warn`` the warnings (an MPI rank other than 0
    passes functions that drop them); ``on_round``, if given, each round's
    rounds.csv row as it is written (experiment tracking).
    """
    wall_start = time.perf_counter()
    engine = engine or make_engine(config, warn)
    warnings: list[str] = []  # said once the run is accepted (a resume checked): a warning never precedes an error
    try:
        setup = prepare(config, warnings.append, engine.reader)
    except BaseException:
        engine.stop()  # a reader may have started the engine's cluster
        raise
    config, payload = setup.config, setup.first
    result = RunResult(payload.params, {})
    server = make_server(config, payload.params)
    first_round = 0
    resume_dir = resume if isinstance(resume, RunDir) else run_dir
    if resume and resume_dir is not None:
        try:
            first_round, payload = resume_state(config, resume_dir, payload, result, server, setup.data.fingerprint)
        except BaseException:
            engine.stop()
            raise
    log(model_line(payload.model.layers.describe(), config.model.backend))
    if first_round and resume_dir is not None:
        log(f"resuming after round {first_round} from {resume_dir.path / 'checkpoints'}")
    for message in warnings:
        warn(message)

    def write_config() -> None:
        """The run directory's first change, once every worker has read its data."""
        if run_dir is not None:
            if resume:
                run_dir.file("summary.json").unlink(missing_ok=True)  # rewritten when the run finishes
            run_dir.write_config(config_as_run(config, engine))

    if first_round < config.train.rounds:
        try:
            payload = train_rounds(
                engine,
                setup,
                payload,
                first_round,
                run_dir,
                result,
                log,
                warn,
                on_round,
                server,
                on_started=write_config,
            )
        except NnlibError:
            if run_dir is not None and not result.rounds:  # no round of it (nor of a resumed run) finished
                run_dir.discard()  # failed before its first checkpoint: nothing to resume, nothing left behind
            raise
    else:
        engine.stop()
        write_config()
    result.params = payload.params
    result.summary = summarize(
        config, setup.data, payload, result, time.perf_counter() - wall_start, first_round if resume else None
    )
    result.model = model_file(config, setup.data, payload.model, payload.params)
    if run_dir is not None:
        run_dir.write_model(result.model.arrays())
        run_dir.write_summary(result.summary)
    return result
