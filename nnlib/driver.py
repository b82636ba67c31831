"""The one driver loop, shared by every engine.

Each round: send the weights (the payload) to every shard, map
:func:`nnlib.tasks.train_shard` over the shards, refuse (or skip) non-finite
results, combine, evaluate on the held-out test set, record the timings,
checkpoint. A synchronous round (``combine: gradient``, or the first
``train.sync_rounds`` rounds) instead averages gradients every mini-batch.
The schedule (how many rounds, which kind, how much local work, the learning
rates) lives here; the arithmetic lives in :mod:`nnlib.core`; where the work
runs and where the reduce happens is the engine's business.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nnlib.config import Config
from nnlib.core.backends import get_backend
from nnlib.core.mlp import ModelSpec
from nnlib.core.params import LayerSpec, init_params, to_named
from nnlib.core.train import LocalSchedule, sync_learning_rates, sync_steps_per_epoch
from nnlib.data.dataset import Dataset, ShardSource, load_dataset
from nnlib.data.partition import partition
from nnlib.engines import make_engine
from nnlib.errors import ConfigError, DivergenceError
from nnlib.outputs import RunDir
from nnlib.tasks import RoundPayload, RoundReducer, train_shard
from nnlib.timing import timed


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


def model_spec(config: Config, data: Dataset) -> ModelSpec:
    layers = LayerSpec((data.n_features, *config.model.hidden, data.n_classes))
    return ModelSpec(layers, config.model.activation, config.model.loss, config.model.l2)


def make_payload(config: Config, spec: ModelSpec, round_index: int, params, velocity,
                 sync_lrs: np.ndarray | None = None) -> RoundPayload:
    """What the mappers need for round ``round_index``."""
    schedule = LocalSchedule(config.train.batch_size, config.train.local_epochs, config.train.local_steps)
    return RoundPayload(round_index, config.seed, params, velocity, spec, config.model.backend, schedule,
                        config.train.lr, config.train.momentum, sync_lrs)


def is_sync_round(config: Config, round_index: int) -> bool:
    """Synchronous gradient averaging this round? (Always with combine=gradient; the first
    ``train.sync_rounds`` rounds otherwise: post-local SGD.)"""
    return config.combine == "gradient" or round_index < config.train.sync_rounds


def sync_schedule(config: Config, smallest_shard: int) -> tuple[int, int]:
    """``(steps per synchronous round, warm-up steps)``."""
    per_epoch = sync_steps_per_epoch(smallest_shard, config.train.batch_size)
    steps = config.train.local_steps or config.train.local_epochs * per_epoch
    return steps, config.train.warmup_epochs * per_epoch


def initial_payload(config: Config, data: Dataset | None = None) -> RoundPayload:
    """Round 0's payload: the seeded initial weights and, with momentum, a zero buffer."""
    data = data if data is not None else load_dataset(config.data, config.seed)
    spec = model_spec(config, data)
    params = init_params(spec.layers, config.seed)
    velocity = np.zeros_like(params) if config.train.momentum > 0 else None
    return make_payload(config, spec, 0, params, velocity)


def check_against_data(config: Config, data: Dataset, shard_sizes: list[int], warn=warn) -> None:
    """Refuse settings the data cannot support; warn about pointless ones."""
    n_train = len(data.y_train)
    if config.mappers > n_train:
        raise ConfigError(f"mappers must be <= the number of training samples ({n_train}), got {config.mappers}")
    if config.mappers == 1 and config.combine != "average":
        warn(f"mappers=1: combine={config.combine} has a single result to combine")
    smallest = min(shard_sizes)
    if config.train.batch_size > smallest:
        warn(f"train.batch_size={config.train.batch_size} is larger than the smallest shard "
             f"({smallest} samples): each epoch is a single batch")
    if config.combine == "sum" and config.mappers > 1 and config.train.rounds > 1:
        warn(f"combine=sum over {config.train.rounds} rounds scales the weights by about {config.mappers} "
             "each round; combine=sum_updates sums the changes instead")
    sync = config.combine == "gradient" or config.train.sync_rounds > 0
    global_batch = config.mappers * config.train.batch_size
    if sync and global_batch > n_train:
        warn(f"the global batch (mappers x train.batch_size = {global_batch}) is larger than the training "
             f"set ({n_train} samples)")
    elif sync and global_batch > 1024:
        warn(f"the global batch (mappers x train.batch_size = {global_batch}) is past 1024, "
             "where larger batches stop paying")
    if not sync and (config.train.lr_scaling != "none" or config.train.warmup_epochs):
        warn("train.lr_scaling and train.warmup_epochs apply to synchronous rounds only "
             "(combine=gradient or train.sync_rounds); they have no effect here")
    elif config.train.warmup_epochs and config.train.lr_scaling == "none":
        warn("train.warmup_epochs has no effect without train.lr_scaling=linear (it ramps up to the scaled rate)")


def with_absolute_paths(config: Config) -> Config:
    """Make file data sources absolute, so workers with another working directory find them."""
    update = {}
    for key in ("source", "test_source", "labels", "test_labels"):
        value = getattr(config.data, key)
        if value is not None and (key != "source" or value not in ("digits", "synthetic")):
            update[key] = str(Path(value).expanduser().absolute())
    return config.model_copy(update={"data": config.data.model_copy(update=update)})


def _round_row(r: int, results, times: dict, seconds: float, test_loss: float, test_acc: float) -> dict:
    mapper_secs = [res.train_seconds for res in results]
    n_seen = sum(res.n_samples for res in results)
    return {
        "round": r, "test_accuracy": test_acc, "test_loss": test_loss,
        "train_loss": sum(res.train_loss * res.n_samples for res in results) / n_seen,
        "seconds": seconds,
        **{f"{k}_seconds": times.get(k, 0.0) for k in ("broadcast", "wait", "combine", "evaluate")},
        "max_mapper_seconds": max(mapper_secs), "median_mapper_seconds": statistics.median(mapper_secs),
        # what the engine spent beyond the slowest mapper's training: launch, shipping, scheduling
        "overhead_seconds": max(times.get("wait", 0.0) - max(mapper_secs), 0.0),
    }


def _mapper_rows(r: int, results) -> list[dict]:
    return [{"round": r, "mapper": res.mapper, "host": res.host, "pid": res.pid, "n_samples": res.n_samples,
             "steps": res.steps, "train_loss": res.train_loss, "train_seconds": res.train_seconds,
             "comm_seconds": res.comm_seconds} for res in results]


def _resume_state(config: Config, run_dir: RunDir, spec: ModelSpec, result: "RunResult"):
    """Load the newest checkpoint of ``run_dir`` into ``result``; return ``(first round, params, velocity)``."""
    ckpt = run_dir.latest_checkpoint()
    if ckpt is None:
        return 0, None, None
    if ckpt.params.shape != (spec.layers.n_params,):
        raise ConfigError(f"--resume: checkpoint {ckpt.path} holds {ckpt.params.size} parameters, "
                          f"the model has {spec.layers.n_params}")
    if (ckpt.velocity is None) != (config.train.momentum == 0):
        raise ConfigError(f"--resume: checkpoint {ckpt.path} does not match train.momentum={config.train.momentum}")
    if ckpt.rounds_done > config.train.rounds:
        raise ConfigError(f"--resume: {run_dir.path} already has {ckpt.rounds_done} rounds; "
                          f"train.rounds must be >= {ckpt.rounds_done}, got {config.train.rounds}")
    result.rounds, result.mapper_rows = run_dir.read_tables(ckpt.rounds_done)
    result.skipped = [{"round": int(r), "mapper": int(m)} for r, m in ckpt.skipped]
    return ckpt.rounds_done, ckpt.params, ckpt.velocity


def run(config: Config, run_dir: RunDir | None = None, engine=None, log=print, warn=warn,
        resume: bool = False) -> RunResult:
    """Train as ``config`` says; write outputs to ``run_dir`` if given; return the final weights.

    After every round the weights and optimizer state are checkpointed to
    ``run_dir/checkpoints/``; ``resume=True`` continues from the newest one and
    ends with exactly the weights of an uninterrupted run. ``log`` receives
    the progress lines and ``warn`` the warnings (an MPI rank other than 0
    passes functions that drop them).
    """
    wall_start = time.perf_counter()
    config = with_absolute_paths(config)
    data = load_dataset(config.data, config.seed)
    shard_sizes = [len(p) for p in partition(data.y_train, min(config.mappers, len(data.y_train)),
                                             config.data.partition, config.seed)]
    check_against_data(config, data, shard_sizes, warn)
    start = initial_payload(config, data)
    spec, params, velocity = start.model, start.params, start.velocity
    backend = get_backend(config.model.backend, spec)
    reduce = RoundReducer(config.combine, config.train.skip_bad_mappers)
    sync_steps, warmup_steps = sync_schedule(config, min(shard_sizes))
    result = RunResult(params, {})
    first_round = 0
    if resume and run_dir is not None:
        first_round, saved_params, saved_velocity = _resume_state(config, run_dir, spec, result)
        if first_round:
            params, velocity = saved_params, saved_velocity
            log(f"resuming after round {first_round} from {run_dir.path / 'checkpoints'}")
        run_dir.file("summary.json").unlink(missing_ok=True)  # rewritten when the run finishes
    if run_dir is not None:
        run_dir.write_config(config.to_dict())

    engine = engine or make_engine(config)
    if first_round < config.train.rounds:
        engine.start(ShardSource(config.data, config.seed, config.mappers))
    try:
        for r in range(first_round, config.train.rounds):
            round_start = time.perf_counter()
            times: dict[str, float] = {}
            if is_sync_round(config, r):
                lrs = sync_learning_rates(r, sync_steps, config.train.lr, config.mappers,
                                          config.train.lr_scaling, warmup_steps)
                payload = make_payload(config, spec, r, params, velocity, lrs)
                combined, results = engine.sync_round(payload, times)
            else:
                payload = make_payload(config, spec, r, params, velocity)
                combined, results = engine.round(train_shard, payload, reduce, times)
            params, velocity = combined.params, combined.velocity
            for mapper in combined.skipped:
                warn(f"round {r}: mapper {mapper} returned NaN or inf; its result was left out "
                     "(train.skip_bad_mappers)")
                result.skipped.append({"round": r, "mapper": mapper})
            with timed(times, "evaluate"):
                test_loss, test_acc = backend.evaluate(params, data.x_test, data.y_test)
            row = _round_row(r, results, times, time.perf_counter() - round_start, test_loss, test_acc)
            result.rounds.append(row)
            result.mapper_rows += _mapper_rows(r, results)
            if run_dir is not None:
                # tables first, then the checkpoint: a resume drops table rows past the checkpoint
                run_dir.write_tables(result.rounds, result.mapper_rows)
                run_dir.write_checkpoint(r + 1, params, velocity, result.skipped)
            log(f"round {r + 1}/{config.train.rounds}  test_acc {test_acc:.4f}  test_loss {test_loss:.4f}  "
                f"train_loss {row['train_loss']:.4f}  {row['seconds']:.2f}s")
    except DivergenceError as exc:
        if run_dir is not None and (ckpt := run_dir.latest_checkpoint()) is not None:
            raise DivergenceError(f"{exc}; the last good checkpoint is {ckpt.path}") from None
        raise
    finally:
        if first_round < config.train.rounds:
            engine.stop()

    result.params = params
    last = result.rounds[-1]
    result.summary = {
        "final_test_accuracy": last["test_accuracy"], "final_test_loss": last["test_loss"],
        "final_train_loss": last["train_loss"], "wall_seconds": time.perf_counter() - wall_start,
        "engine": config.engine, "mappers": config.mappers, "combine": config.combine,
        "rounds": config.train.rounds, "backend": config.model.backend,
        "n_train": int(len(data.y_train)), "n_test": int(len(data.y_test)),
        "n_features": data.n_features, "n_classes": data.n_classes, "layer_sizes": list(spec.layers.sizes),
        "skipped_mappers": result.skipped, "resumed_after_round": first_round if resume else None,
    }
    if run_dir is not None:
        run_dir.write_model(to_named(params, spec.layers))
        run_dir.write_summary(result.summary)
    return result
