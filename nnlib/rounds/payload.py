"""What the driver sends to every mapper at the start of a round, and what comes back.

:class:`RoundPayload` carries the round's plan, the weights and the optimizer
state; :class:`MapperResult` and :class:`MapperStats` are a mapper's answer;
:class:`Combined` is a round's reduced state. Round 0's payload comes from
:func:`first_payload`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from nnlib.core.cnn import ConvSpec
from nnlib.core.mlp import ModelSpec
from nnlib.core.module_spec import module_spec
from nnlib.core.optim import SGD, Adam, state_rows
from nnlib.core.params import LayerSpec, Layout, init_params
from nnlib.core.split import Split, mapper_choice, round_split, sub_indices
from nnlib.data.dataset import Dataset
from nnlib.errors import ConfigError
from nnlib.rounds.schedule import RoundPlan, Schedule


@dataclass(frozen=True)
class SubnetPlan:
    """A round in which each mapper trains a sub-network (``combine: ist``, the last round of ``split``).

    ``labels`` fixes the split (each hidden unit's group, per layer); without
    it the split is drawn from ``(seed, round)`` alone (IST), so the driver
    and every mapper, on any engine, compute the same one without sending
    it. Mapper ``m`` trains :func:`nnlib.core.split.mapper_choice`. With
    ``scale`` a sub-network's hidden-to-output product is multiplied by the
    number of groups while it trains (its logits come from 1/G of the
    units), not at evaluation.
    """

    groups: int
    scale: bool = True
    labels: tuple[tuple[int, ...], ...] | None = None
    alternating: bool = False
    sum_shared: bool = False  # what several sub-networks hold is summed, not averaged

    def split(self, layers: LayerSpec, seed: int, round_index: int) -> Split:
        if self.labels is not None:
            return Split.from_labels(self.labels, self.groups)
        return round_split(layers.sizes[1:-1], self.groups, seed, round_index)

    def choice(self, mapper: int, layers: LayerSpec) -> tuple[int, ...]:
        return mapper_choice(mapper, self.groups, layers.n_layers - 1, self.alternating)


@dataclass(frozen=True)
class RoundPayload:
    """What the driver sends to every mapper at the start of a round."""

    plan: RoundPlan
    seed: int
    params: np.ndarray  # (n_params,) float32
    opt_state: np.ndarray | None  # the optimizer's state (momentum buffer), or None
    model: ModelSpec
    backend: str
    optimizer: SGD | Adam
    subnets: SubnetPlan | None = None  # the groups of a round of sub-networks (plan.sub_networks); else None
    sliced_for: int | None = None  # params and opt_state already hold this mapper's sub-network
    proximal_mu: float = 0.0  # FedProx: the pull towards the round's weights (train.proximal_mu)
    mean_weight: float | None = None  # the mean sample weight over every training row (data.weight_column);
    #                                     a synchronous round's batch losses are normalised by it on every engine

    @property
    def round_index(self) -> int:
        return self.plan.index

    def split(self) -> Split:
        """This round's split of the hidden units (``combine: ist`` only)."""
        if self.subnets is None:
            raise ValueError("a round without sub-networks has no split of the hidden units (combine: ist only)")
        return self.subnets.split(self.model.mlp, self.seed, self.plan.index)

    def for_mapper(self, mapper: int) -> tuple[np.ndarray, np.ndarray | None, ModelSpec]:
        """``(params, optimizer state, model)`` that ``mapper`` trains: its sub-network, or the whole network.

        The optimizer state (momentum) is sliced with the same indices as the
        weights and copied back with them.
        """
        if self.subnets is None:
            return self.params, self.opt_state, self.model
        split, choice = self.split(), self.subnets.choice(mapper, self.model.mlp)
        model = replace(
            self.model,
            layers=split.sub_layers(self.model.mlp, choice),
            output_scale=float(self.subnets.groups) if self.subnets.scale else 1.0,
        )
        if self.sliced_for is not None:
            if self.sliced_for != mapper:
                raise ValueError(f"a payload sliced for mapper {self.sliced_for} reached mapper {mapper}")
            return self.params, self.opt_state, model
        idx = sub_indices(self.model.mlp, split, choice)
        state = state_rows(self.opt_state, self.params.size)
        return self.params[idx], None if state is None else state[:, idx].ravel(), model

    def sliced(self, mapper: int) -> RoundPayload:
        """The payload with only ``mapper``'s sub-network in it (what an engine that sends each mapper
        its own message ships); the whole payload when the round trains the whole network."""
        if self.subnets is None:
            return self
        params, opt_state, _ = self.for_mapper(mapper)
        return replace(self, params=params, opt_state=opt_state, sliced_for=mapper)


@dataclass(frozen=True)
class MapperStats:
    """How one mapper ran one round: the facts every engine reports, without weights."""

    mapper: int
    n_samples: int
    steps: int
    train_loss: float  # mean data loss over the round's mini-batches
    host: str
    pid: int
    train_seconds: float  # computing (forward, backward, update)
    comm_seconds: float = 0.0  # waiting in collectives (synchronous rounds, MPI)
    peak_rss_mb: float = 0.0  # the mapper process's peak resident memory so far
    result_bytes: int = 0  # bytes of the weights and optimizer state sent back (local rounds)
    weight_sum: float = math.nan  # the shard's sum of sample weights (data.weight_column); nan: unweighted

    @property
    def combine_size(self) -> float:
        """What ``combine: weighted`` weighs this mapper by, on every engine: its rows' total sample weight
        under ``data.weight_column``, else its row count."""
        return float(self.n_samples) if math.isnan(self.weight_sum) else self.weight_sum


#: MapperStats' fields in order, and those that are numbers (what MPI gathers as one float64 row per rank)
STATS_FIELDS = tuple(f.name for f in fields(MapperStats))
NUMERIC_STATS = tuple(f.name for f in fields(MapperStats) if f.type in ("int", "float") and f.name != "mapper")


def stats_from_numbers(mapper: int, host: str, numbers) -> MapperStats:
    """A :class:`MapperStats` from its :data:`NUMERIC_STATS` values in order (ints restored)."""
    types = {f.name: f.type for f in fields(MapperStats)}
    values: dict[str, Any] = {
        k: int(v) if types[k] == "int" else float(v) for k, v in zip(NUMERIC_STATS, numbers, strict=True)
    }
    return MapperStats(mapper=mapper, host=host, **values)


@dataclass(frozen=True)
class MapperResult:
    """What one mapper sends back after a local round: its weights, optimizer state and stats."""

    stats: MapperStats
    params: np.ndarray  # (n_params,) float32
    opt_state: np.ndarray | None


@dataclass
class Combined:
    """A round's reduced state, and the mappers whose non-finite results were dropped."""

    params: np.ndarray
    opt_state: np.ndarray | None
    skipped: list[int] = field(default_factory=list)


def model_spec(config, data: Dataset) -> ModelSpec:
    """The model a config trains on ``data``: input and output sizes from the data, the rest from ``model``."""
    m = config.model
    layers: Layout  # a LayerSpec, ConvSpec or ModuleSpec: the flat-vector interface the backends share
    if m.type == "module":
        shape = data.image_shape if data.image_shape is not None else (data.n_features,)
        layers = module_spec(m.module, m.kwargs, shape, data.n_outputs, config.train.device)
        # the mappers run on this machine (not on Spark, whose master spark-submit may give): no GPU here is
        # one line now; on Spark the task that lacks one says so
        if config.train.device == "cuda" and config.engine != "spark":
            from nnlib.core.torch_module import pick_device

            pick_device("cuda")
    elif m.type == "cnn":
        if data.image_shape is None:
            raise ConfigError(
                f"model.type=cnn needs the image shape of data.source {config.data.source}: "
                f"set data.image_shape to [H, W] or [C, H, W] ({data.n_features} values in all)"
            )
        conv = ConvSpec(data.image_shape, tuple(m.channels), m.kernel, data.n_outputs)
        if min(conv.map_shapes()[-1][1:]) < 1:
            raise ConfigError(
                f"model.channels: {len(m.channels)} 2x2 max-pools shrink the "
                f"{data.image_shape[1]}x{data.image_shape[2]} image to nothing; use fewer"
            )
        layers = conv
    else:
        layers = LayerSpec((data.n_features, *m.hidden, data.n_outputs))
    l2 = m.l2 / data.n_train if m.l2_per_sample else m.l2
    if m.regression:
        return ModelSpec(layers, m.activation, m.loss, l2, task="regression", huber_delta=m.huber_delta)
    return ModelSpec(layers, m.activation, m.loss, l2)


def make_optimizer(config) -> SGD | Adam:
    """The update rule of a config's ``train`` settings."""
    t = config.train
    if t.optimizer in ("adam", "adamw"):
        return Adam(t.beta1, t.beta2, t.eps, t.weight_decay, decoupled=t.optimizer == "adamw")
    return SGD(t.momentum, nesterov=t.optimizer == "nesterov", weight_decay=t.weight_decay)


def first_payload(config, data: Dataset, schedule: Schedule | None = None) -> RoundPayload:
    """Round 0's payload: the seeded initial weights and a fresh optimizer state."""
    spec = model_spec(config, data)
    params = init_params(spec.layers, config.seed)
    optimizer = make_optimizer(config)
    if schedule is None:
        sizes = data.shard_sizes(config.mappers, config.data.partition, config.seed, config.data.skew_alpha)
        schedule = Schedule.from_config(config, sizes)
    plan = schedule.plan(0)
    subnets = ist_subnets(config) if plan.sub_networks == "ist" else None
    mean_weight = data.mean_weight  # of w_train, or of a row-keyed source's survey (its weights stay with the mappers)
    return RoundPayload(
        plan,
        config.seed,
        params,
        optimizer.init_state(params),
        spec,
        config.model.backend,
        optimizer,
        subnets,
        proximal_mu=config.train.proximal_mu,
        mean_weight=mean_weight,
    )


def ist_subnets(config) -> SubnetPlan:
    """A round of ``combine: ist``: one group per mapper, drawn afresh from ``(seed, round)`` on every engine."""
    return SubnetPlan(config.mappers, config.split.scale == "groups")
