"""Configuration as validated, frozen data.

A run is described by :class:`Config`, loaded from a YAML file (which holds
only what differs from the defaults below) plus dotted ``--set key=value``
overrides. The defaults are the default run (digits, 4 mappers, 5 rounds of
2 local epochs) on the local engine. The Literal types below hold the only
lists of allowed values. Unknown keys and wrong types are refused with a one-line
:class:`ConfigError` that names the key, what is allowed and what was given.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from nnlib.errors import ConfigError


class _Loader(yaml.SafeLoader):
    """YAML's safe loader, also reading ``1e-3`` as a float (YAML 1.1 wants ``1.0e-3``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _yaml(text: str):
    return yaml.load(text, Loader=_Loader)


SYNC_ENGINES = ("local", "mpi", "spark")  # engines that can average gradients every mini-batch


class Invalid(ValueError):
    """A validator's refusal, with the dotted keys whose values it weighs: an error then names where each of
    those values came from (``--set``, the conf file, the API's overrides), not only the conf file."""

    def __init__(self, keys: tuple[str, ...], message: str):
        super().__init__(message)
        self.keys = keys


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class DataConfig(_Section):
    source: str = Field(
        "digits",
        description="the dataset: digits, synthetic, or a path: .npz, .csv, .parquet, IDX (*-images-idx3-ubyte[.gz]), "
        "a Parquet dataset (a directory of .parquet files, or a glob such as data/part-*.parquet), whose "
        "rows are numbered in sorted file order",
    )
    test_source: str | None = Field(
        None,
        description="a separate test set, a path of the same kinds as data.source (else data.test_fraction is split "
        "off)",
    )
    labels: str | None = Field(
        None, description="IDX: the labels file (default: images-idx3 -> labels-idx1 in data.source's name)"
    )
    test_labels: str | None = Field(
        None,
        description="IDX: the test set's labels file (default: images-idx3 -> labels-idx1 in data.test_source's name)",
    )
    label_column: str = Field(
        "label",
        description="CSV/Parquet: the label column; every other column is a feature, except a first column with an "
        "empty header (an index pandas wrote), left out with a warning",
    )
    label_columns: list[str] | None = Field(
        None,
        description="model.task=regression: several target columns of a CSV or Parquet source, in order "
        "(instead of data.label_column)",
    )
    standardize_target: bool = Field(
        True,
        description="model.task=regression: train on targets standardised with the training rows' mean "
        "and standard deviation (saved in the model file and undone at prediction)",
    )
    weight_column: str | None = Field(
        None,
        description="a column (CSV, Parquet) or array (.npz) of sample weights (>= 0, finite, not all 0): "
        "each row's loss, the metrics and combine=weighted are weighted by it; not a feature",
    )
    validation_column: str | None = Field(
        None,
        description="a boolean column (CSV, Parquet) or array (.npz) marking the training rows held out "
        "for validation (train.patience), instead of data.validation_fraction; not a feature",
    )
    features_column: str | None = Field(None, description="Parquet: one list/array column holding the features")
    key_column: str | None = Field(
        None, description="CSV/Parquet: a row key, not a feature; nnlib predict writes it beside each prediction"
    )
    feature_columns: list[str] | None = Field(
        None, description="CSV/Parquet: only these columns are features, in this order (the model file records them)"
    )
    drop_columns: list[str] = Field(
        [], description="CSV/Parquet: these columns are not features (an id, a leak); a name the table lacks is refused"
    )
    test_fraction: float = Field(
        0.2, gt=0, lt=1, description="the held-out test share when no data.test_source is given"
    )
    validation_fraction: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="the share of the training set held out as a validation set for train.patience (the shards are "
        "cut from the rest)",
    )
    standardize: bool = Field(True, description="standardise the features with statistics of the training part only")
    partition: Literal["random", "stratified", "contiguous", "label_skew", "quantity_skew"] = Field(
        "random",
        description="how the training set is cut into shards; label_skew and quantity_skew are not identically "
        "distributed",
    )
    skew_alpha: float = Field(
        0.5,
        gt=0,
        description="label_skew: each class shared over the mappers by a Dirichlet(alpha) draw; quantity_skew: the "
        "shard sizes; small is strong skew, large approaches stratified/random",
    )
    image_shape: list[int] | None = Field(
        None,
        description="model.type=cnn: the shape of one row, [H, W] or [C, H, W], channel-first (digits: [8, 8]; IDX: "
        "its own)",
    )
    n_samples: int = Field(
        2000, ge=2, description="data.source=synthetic: the number of samples (seeded Gaussian blobs)"
    )
    n_features: int = Field(20, ge=1, description="data.source=synthetic: the number of features")
    n_classes: int = Field(3, ge=2, description="data.source=synthetic: the number of classes")
    shard_storage: Literal["memory", "disk", "auto"] = Field(
        "memory",
        description="where a mapper keeps its shard: memory, or disk (written once to data.scratch_dir "
        "and read by rows each mini-batch: the same weights, bit for bit, with one mini-batch in memory); "
        "auto: disk when the largest shard would pass data.memory_per_mapper_mb (nnlib/data/storage.py)",
    )
    memory_per_mapper_mb: float | None = Field(
        None,
        gt=0,
        description="data.shard_storage=auto: each mapper's memory budget in MiB (default: "
        "spark.executor.pyspark.memory on Spark, from spark.conf or the session; else none, and memory)",
    )
    scratch_dir: str | None = Field(
        None,
        description="data.shard_storage=disk: the local folder for the shard files (default: Spark's "
        "local dir on an executor, SPARK_LOCAL_DIRS or spark.local.dir, else the system's temporary folder)",
    )
    shuffle: Literal["exact", "block"] = Field(
        "exact",
        description="how each epoch orders a shard's rows: exact (a permutation of the whole shard; with "
        "disk storage the same weights as memory, bit for bit, read row by row) or block (blocks of about "
        "1 MiB of rows in a shuffled order, then the rows of each 16 MiB window shuffled; read sequentially, "
        "for disk shards far larger than the page cache; seeded by seed, round and shard, with either storage)",
    )

    @model_validator(mode="after")
    def _one_way_to_choose_features(self):
        if self.features_column is not None and (self.feature_columns is not None or self.drop_columns):
            raise Invalid(
                ("data.features_column", "data.feature_columns", "data.drop_columns"),
                "data.features_column names one list column holding the features; "
                "data.feature_columns and data.drop_columns choose among separate columns: "
                f"use one or the other, got data.features_column={self.features_column!r}",
            )
        if self.feature_columns is not None and not self.feature_columns:
            raise Invalid(("data.feature_columns",), "data.feature_columns: list at least one column, got []")
        return self

    @model_validator(mode="after")
    def _one_validation_set(self):
        if self.validation_column is not None and self.validation_fraction:
            raise Invalid(
                ("data.validation_column", "data.validation_fraction"),
                f"data.validation_column ({self.validation_column!r}) marks the validation rows; "
                f"data.validation_fraction draws them: use one or the other, got "
                f"data.validation_fraction={self.validation_fraction}",
            )
        if self.label_columns is not None:
            if not self.label_columns or len(set(self.label_columns)) != len(self.label_columns):
                raise Invalid(
                    ("data.label_columns",),
                    f"data.label_columns: one or more distinct column names, got {self.label_columns}",
                )
        named = [c for c in (self.weight_column, self.validation_column, self.key_column) if c is not None]
        targets = self.label_columns or [self.label_column]
        for column in named:
            if column in targets or named.count(column) > 1:
                raise Invalid(
                    (
                        "data.weight_column",
                        "data.validation_column",
                        "data.label_column",
                        "data.label_columns",
                        "data.key_column",
                    ),
                    f"data.weight_column, data.validation_column, the key and the label column(s) must "
                    f"be different columns, got {column!r} twice",
                )
        return self

    @property
    def targets(self) -> list[str]:
        """The label column(s): ``label_columns`` when set, else ``[label_column]``."""
        return list(self.label_columns) if self.label_columns is not None else [self.label_column]

    @property
    def extra_columns(self) -> list[str]:
        """The columns that are neither features nor the (first) label: further targets, weights, validation."""
        extra = self.targets if self.label_columns is not None else []
        return extra + [c for c in (self.weight_column, self.validation_column) if c is not None]

    @model_validator(mode="after")
    def _image_shape_is_an_image(self):
        shape = self.image_shape
        if shape is not None and (len(shape) not in (2, 3) or min(shape) < 1):
            raise Invalid(("data.image_shape",), f"data.image_shape: [H, W] or [C, H, W] of sizes >= 1, got {shape}")
        return self


class ModelConfig(_Section):
    type: Literal["mlp", "cnn", "module"] = Field(
        "mlp",
        description="a multilayer perceptron, the MPI slides' small CNN, or your own torch.nn.Module (model.module)",
    )
    module: str | None = Field(
        None,
        description="model.type=module: 'package.module:callable', the class or function that builds the "
        "torch.nn.Module",
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="model.type=module: the callable's keyword arguments"
    )
    hidden: list[int] = Field(
        default_factory=lambda: [64], description="mlp: the hidden layer sizes ([] is a linear model)"
    )
    channels: list[int] = Field(
        default_factory=lambda: [16, 32],
        description="cnn: one conv + activation + 2x2 max-pool block per entry, with this many channels",
    )
    kernel: int = Field(5, ge=1, description="cnn: the kernel size (odd), zero-padded to keep the map's size")
    activation: Literal["relu", "sigmoid", "tanh"] = Field("relu", description="the hidden layers' activation")
    task: Literal["classification", "regression"] = Field(
        "classification",
        description="classification: integer class labels 0..K-1; regression: numeric "
        "targets (one label column, or data.label_columns), one output per target",
    )
    loss: Literal["cross_entropy", "squared", "absolute", "huber"] = Field(
        "cross_entropy",
        description="classification: cross_entropy (default) or squared (against one-hot "
        "classes); regression: squared (default), absolute or huber",
    )
    huber_delta: float = Field(
        1.0, gt=0, description="loss=huber: where the loss turns from squared to linear, in standardised target units"
    )
    l2: float = Field(0.0, ge=0, description="the L2 penalty lambda/2 * sum(W**2) on the weights (not the biases)")
    l2_per_sample: bool = Field(
        False, description="the penalty is lambda/(2n) * sum(W**2), n the training-set size (the MPI slides' form)"
    )
    backend: Literal["numpy", "torch"] = Field(
        "numpy", description="numpy needs no torch; torch is imported only when chosen (model.type=module: torch)"
    )

    @property
    def regression(self) -> bool:
        return self.task == "regression"

    @model_validator(mode="before")
    @classmethod
    def _module_is_torch(cls, data):
        if isinstance(data, dict) and data.get("type") == "module":
            if data.get("backend", "torch") != "torch":
                raise Invalid(
                    ("model.type", "model.backend"),
                    f"model.type=module trains a torch.nn.Module and needs model.backend=torch "
                    f"(its default), got model.backend={data['backend']!r}",
                )
            data = {**data, "backend": "torch"}
        return data

    @model_validator(mode="before")
    @classmethod
    def _regression_loss_default(cls, data):
        if isinstance(data, dict) and data.get("task") == "regression" and "loss" not in data:
            data = {**data, "loss": "squared"}
        return data

    @model_validator(mode="after")
    def _loss_fits_the_task(self):
        allowed = {"classification": ("cross_entropy", "squared"), "regression": ("squared", "absolute", "huber")}
        if self.loss not in allowed[self.task]:
            raise Invalid(
                ("model.loss", "model.task"),
                f"model.loss: under model.task={self.task} one of {', '.join(allowed[self.task])}, got {self.loss}",
            )
        return self

    @model_validator(mode="after")
    def _module_is_named(self):
        if self.type == "module" and not self.module:
            raise Invalid(
                ("model.type", "model.module"),
                "model.type=module needs model.module: 'package.module:callable' (a class or function "
                "returning a torch.nn.Module), e.g. examples.models.small_resnet:make",
            )
        if self.module is not None and self.type != "module":
            raise Invalid(
                ("model.module", "model.type"),
                f"model.module is read with model.type=module, got model.type={self.type}",
            )
        return self

    @model_validator(mode="after")
    def _hidden_positive(self):
        bad = [h for h in self.hidden if h < 1]
        if bad:
            raise Invalid(("model.hidden",), f"model.hidden: every layer size must be >= 1, got {self.hidden}")
        if not self.channels or min(self.channels) < 1:
            raise Invalid(("model.channels",), f"model.channels: one or more channel counts >= 1, got {self.channels}")
        if self.kernel % 2 == 0:
            raise Invalid(
                ("model.kernel",), f"model.kernel: must be odd (padded to keep the map's size), got {self.kernel}"
            )
        return self


class TrainConfig(_Section):
    rounds: int = Field(5, ge=1, description="combine steps; 1 is one-shot averaging")
    local_epochs: int = Field(2, ge=1, description="the epochs each mapper trains per round")
    local_steps: int | None = Field(
        None, ge=1, description="if set: mini-batch steps per round instead of epochs (average every tau steps)"
    )
    batch_size: int = Field(32, ge=1, description="the mini-batch size on each mapper")
    lr: float = Field(0.1, gt=0, description="the learning rate (of the first round after any warm-up)")
    momentum: float = Field(0.0, ge=0, lt=1, description="SGD momentum (PyTorch's rule v = mu*v + g; w -= lr*v)")
    optimizer: Literal["sgd", "nesterov", "adam", "adamw"] = Field(
        "sgd", description="the update rule, as torch.optim.SGD (nesterov needs momentum), Adam and AdamW compute it"
    )
    weight_decay: float = Field(
        0.0,
        ge=0,
        description="L2 added to the gradient (sgd, nesterov, adam) or decoupled decay (adamw), on every parameter",
    )
    beta1: float = Field(0.9, ge=0, lt=1, description="Adam's first-moment decay")
    beta2: float = Field(0.999, ge=0, lt=1, description="Adam's second-moment decay")
    eps: float = Field(1e-8, gt=0, description="Adam's epsilon")
    optimizer_state: Literal["average", "reset"] = Field(
        "average",
        description="between rounds the optimizer state (momentum, Adam's moments and step counts) is averaged over "
        "the mappers like the weights, or started afresh every round",
    )
    proximal_mu: float = Field(
        0.0,
        ge=0,
        description="FedProx: each mapper adds (mu/2) * ||w - w_round||^2 to its loss, pulling it towards the round's "
        "weights",
    )
    lr_schedule: Literal["constant", "step", "cosine"] = Field(
        "constant",
        description="the rate across rounds: constant; times train.lr_gamma every train.lr_step_rounds rounds; cosine "
        "decay to train.lr_min over the rounds",
    )
    lr_warmup_rounds: int = Field(
        0, ge=0, description="the rate climbs linearly, lr * (r+1)/(W+1), over these first rounds"
    )
    lr_step_rounds: int = Field(1, ge=1, description="lr_schedule=step: the period in rounds")
    lr_gamma: float = Field(0.5, gt=0, le=1, description="lr_schedule=step: the factor")
    lr_min: float = Field(0.0, ge=0, description="lr_schedule=cosine: the rate it decays towards (below train.lr)")
    patience: int | None = Field(
        None,
        ge=1,
        description="early stopping: stop after this many rounds without a lower validation loss and keep the best "
        "round's weights (needs a validation set)",
    )
    stop_grace_seconds: float | None = Field(
        60.0,
        gt=0,
        description="after SIGTERM the round in progress finishes; one still running this many seconds after the "
        "signal is abandoned (the checkpoint is the round before); null: wait for the round",
    )
    lr_scaling: Literal["none", "linear"] = Field(
        "none",
        description="synchronous rounds: linear multiplies train.lr by the mappers taking part in the step, mappers "
        "on even shards (the large-batch linear scaling rule)",
    )
    warmup_epochs: int = Field(
        0, ge=0, description="synchronous rounds: climb linearly from train.lr to the scaled rate over this many epochs"
    )
    sync_rounds: int = Field(
        0,
        ge=0,
        description="post-local SGD: this many rounds of synchronous gradient averaging first, then periodic model "
        "averaging with combine",
    )
    skip_bad_mappers: bool = Field(
        False,
        description="leave out a mapper whose weights turn NaN/inf for that round (recorded in the summary) instead "
        "of stopping",
    )
    target_accuracy: float | None = Field(
        None, gt=0, le=1, description="stop after the first round whose test accuracy reaches this"
    )
    overlap_scoring: bool = Field(
        True,
        description="on Spark and mrjob's local/cluster runners, score round r and write its tables and checkpoint "
        "while the mappers train round r+1",
    )
    device: Literal["cpu", "cuda", "auto"] = Field(
        "cpu",
        description="model.type=module: where each mapper trains (Spark's task GPU, MPI's local rank; auto: a GPU "
        "when the task has one)",
    )


# Spark's master URLs (SparkContext's createTaskScheduler): local, local[N|*], local[N|*,F], local-cluster[N,C,M],
# spark://HOST:PORT[,HOST:PORT...], yarn, k8s://...
SPARK_MASTER = re.compile(
    r"local(\[(\*|[1-9]\d*)(,[1-9]\d*)?\])?|local-cluster\[\d+,\d+,\d+\]"
    r"|spark://\S+|yarn|k8s://\S+"
)


# a Spark Connect server: sc://HOST[:PORT][/;param=value...], or local[N] (a server of pyspark's jars, here)
SPARK_REMOTE = re.compile(r"sc://[^/;\s]+/?(;\S*)?|local(\[(\*|[1-9]\d*)\])?")


def redact_url(url: str) -> str:
    """A Spark Connect URL with its secret hidden: ``sc://h:15002/;token=abc`` -> ``sc://h:15002/;token=***``."""
    return re.sub(r"(;\s*token=)[^;]*", r"\1***", url, flags=re.IGNORECASE)


class SparkConfig(_Section):
    master: str | None = Field(
        None,
        description="the master of a session nnlib starts outside spark-submit: local[N], spark://host:7077, yarn, "
        "... (default: spark-defaults.conf's, else local[*]); spark-submit's master and a running "
        "session's win; config.yaml records the master used",
    )
    remote: str | None = Field(
        None,
        description="a Spark Connect server to train on, sc://HOST:PORT[/;token=...] or local[N] (default: "
        "SPARK_REMOTE, if set); its token never reaches config.yaml, logs or MLflow",
    )
    app_name: str = Field("nnlib", description="the Spark application's name")
    log_level: Literal["ALL", "DEBUG", "INFO", "WARN", "ERROR", "FATAL", "OFF"] = Field(
        "ERROR", description="Spark's own logging; INFO brings it back"
    )
    mode: Literal["auto", "stage", "jobs"] = Field(
        "auto",
        description="one long-lived stage for the whole run, or one Spark job per round over DataFrames; auto: stage "
        "on a classic session, jobs on Spark Connect (whose executors cannot reach the client)",
    )
    collective: Literal["tasks", "driver"] = Field(
        "tasks",
        description="stage, synchronous rounds: the tasks average each step's gradients among themselves, or each "
        "sends its gradient to the driver and waits for the mean (the same weights, bit for bit)",
    )
    port: int = Field(
        0, ge=0, le=65535, description="stage: the driver's port for the mappers' connections (0: any free port)"
    )
    mapper_timeout: float = Field(
        1800.0,
        gt=0,
        description="stage: seconds without a word from a mapper before the run ends (plus a minute to start)",
    )
    stage_attempts: int = Field(
        3, ge=1, description="stage: how many times the stage may be started when executors are lost"
    )
    collect_held_out_mb: float = Field(
        64.0,
        ge=0,
        description="a Parquet source's test and validation rows are collected to the driver up to this size (float32 "
        "MB); larger, they stay with the mappers, which score them every round",
    )
    conf: dict[str, str] = Field(
        default_factory=dict,
        description="more Spark settings for a session nnlib starts, e.g. {spark.executor.pyspark.memory: 2g}",
    )
    task_gpus: float | None = Field(
        None,
        gt=0,
        description="GPUs each of the stage's tasks asks for, by stage-level scheduling (a ResourceProfile): whole, "
        "or a fraction <= 0.5; a standalone, YARN or Kubernetes master, not local",
    )

    @model_validator(mode="after")
    def _task_gpus_as_spark_takes_them(self):
        if self.task_gpus is not None and self.task_gpus > 0.5 and self.task_gpus % 1:  # Spark's own rule
            raise Invalid(
                ("spark.task_gpus",),
                f"spark.task_gpus: must be a whole number or a fraction <= 0.5 (0.25: four tasks "
                f"share a GPU), got {self.task_gpus}",
            )
        return self

    @model_validator(mode="after")
    def _master_is_a_master_url(self):
        # checked here: else the JVM prints its stack trace and exits
        if self.master is not None and not SPARK_MASTER.fullmatch(self.master):
            raise Invalid(
                ("spark.master",),
                f"spark.master: must be local, local[N], local[*], local[N,F], spark://HOST:PORT, yarn "
                f"or k8s://HOST:PORT, got {self.master!r}",
            )
        if self.remote is not None and not SPARK_REMOTE.fullmatch(self.remote):
            raise Invalid(
                ("spark.remote",),
                "spark.remote: must be sc://HOST:PORT (a Spark Connect server) or local[N], got "
                f"{redact_url(self.remote)!r}",
            )
        return self


class MpiConfig(_Section):
    collective: Literal["allreduce", "allgather"] = Field(
        "allreduce", description="how the ranks combine (the same result either way)"
    )
    launcher: list[str] = Field(
        default_factory=lambda: ["mpiexec"],
        description="engine=mpi: the command that starts the ranks (given -n mappers)",
    )
    args: list[str] = Field(
        default_factory=list, description="engine=mpi: more options for the launcher, e.g. [--oversubscribe]"
    )


class MrjobConfig(_Section):
    runner: Literal["inline", "local", "hadoop", "emr"] = Field("local", description="mrjob's runner (-r)")
    args: list[str] = Field(
        default_factory=list,
        description="more mrjob options, passed through (e.g. [--hadoop-streaming-jar, /path.jar])",
    )
    scratch: str | None = Field(
        None,
        description="where a Parquet source's shards are written once before the rounds: a folder or a URI every node "
        "can write (hdfs:///tmp/nnlib, needed by the hadoop and emr runners); default a temporary folder "
        "on this machine",
    )


class SplitConfig(_Section):
    scale: Literal["groups", "none"] = Field(
        "groups",
        description="ist, split: multiply a sub-network's hidden-to-output product by G while it trains (not at "
        "evaluation)",
    )
    groups: int | None = Field(
        None,
        ge=1,
        description="G, the groups per hidden layer (default: mappers for split, 2 for split-search); split needs "
        "mappers to be a multiple of it",
    )
    warmup_fraction: float = Field(
        0.25, gt=0, lt=1, description="split, split-search: the share of the training data for the whole-network phase"
    )
    method: Literal["independence", "random", "alternating", "none"] = Field(
        "independence", description="split: how the groups are chosen"
    )
    recombine: Literal["average", "sum"] = Field(
        "average",
        description="split: what several sub-networks hold (the output bias) is averaged or summed when the pieces go "
        "back",
    )
    equal_sizes: bool = Field(True, description="split-search: only groups of equal size, or any non-empty sizes")
    max_combinations: int = Field(
        1000, ge=1, description="split-search: past this many distinct splits, draw this many at random"
    )


class ServerConfig(_Section):
    lr: float = Field(
        1.0,
        gt=0,
        description="the server's step after each local round (FedAvgM): v = momentum*v + (w - w_avg), w -= lr*v; 1 "
        "and momentum 0 are plain averaging",
    )
    momentum: float = Field(
        0.0, ge=0, lt=1, description="the server's momentum (FedAvgM); 0 with server.lr 1 is plain averaging"
    )


class MlflowConfig(_Section):
    tracking_uri: str | None = Field(
        None,
        description="where tracking=mlflow logs: a server (http://...), a database (sqlite:///mlflow.db) or a folder "
        "(default: ./mlruns)",
    )
    experiment: str = Field("nnlib", description="the MLflow experiment's name")


class Config(_Section):
    engine: Literal["local", "spark", "mrjob", "mpi"] = Field(
        "local", description="where the mappers run; local is in-process and sequential, the reference"
    )
    mappers: int = Field(4, ge=1, description="the number of shards / map tasks (at most the training samples)")
    combine: Literal["average", "weighted", "sum", "sum_updates", "gradient", "ist", "split"] = Field(
        "average",
        description="how the mappers' weights are merged; gradient averages gradients every step; ist and split train "
        "sub-networks",
    )
    seed: int = Field(
        0, description="seeds the split, the partition, the initial weights and every mapper's batch order"
    )
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    spark: SparkConfig = SparkConfig()
    mrjob: MrjobConfig = MrjobConfig()
    mpi: MpiConfig = MpiConfig()
    split: SplitConfig = SplitConfig()
    server: ServerConfig = ServerConfig()
    tracking: Literal["none", "mlflow"] = Field("none", description="experiment tracking")
    mlflow: MlflowConfig = MlflowConfig()

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self):
        if self.train.optimizer == "nesterov" and self.train.momentum == 0:
            raise Invalid(
                ("train.optimizer", "train.momentum"), "train.optimizer=nesterov needs train.momentum > 0, got 0"
            )
        return self

    @model_validator(mode="after")
    def _split_needs_groups_that_fit(self):
        if self.combine != "split":
            return self
        g = 1 if self.split.method == "none" else (self.split.groups or self.mappers)
        if self.train.rounds < 2:
            raise Invalid(
                ("combine", "train.rounds"),
                "combine=split trains the whole network for train.rounds - 1 rounds, then the "
                f"sub-networks for one: train.rounds must be >= 2, got {self.train.rounds}",
            )
        if not self.model.hidden or min(self.model.hidden) < g:
            raise Invalid(
                ("combine", "model.hidden", "split.groups", "split.method"),
                f"combine=split cuts every hidden layer into {g} groups; model.hidden="
                f"{self.model.hidden} has a layer with fewer units",
            )
        if self.mappers % g:
            raise Invalid(
                ("combine", "mappers", "split.groups"),
                f"combine=split: mappers ({self.mappers}) must be a multiple of split.groups ({g}), "
                "so that every sub-network has its mappers",
            )
        return self

    @model_validator(mode="after")
    def _regression_needs_no_classes(self):
        if not self.model.regression:
            if self.data.label_columns is not None:
                raise Invalid(
                    ("data.label_columns", "model.task"),
                    f"data.label_columns ({self.data.label_columns}) are regression targets and need "
                    "model.task=regression; a classifier reads one data.label_column",
                )
            return self
        if self.data.partition in ("stratified", "label_skew"):
            raise Invalid(
                ("data.partition", "model.task"),
                f"data.partition={self.data.partition} deals out class labels and needs "
                "model.task=classification; under regression use random, contiguous or quantity_skew",
            )
        if self.combine == "split":
            raise Invalid(
                ("combine", "model.task"),
                "combine=split compares its sub-networks by test accuracy, which model.task=regression "
                "has not; use combine=ist, average, weighted, sum, sum_updates or gradient",
            )
        if self.train.target_accuracy is not None:
            raise Invalid(
                ("train.target_accuracy", "model.task"),
                f"train.target_accuracy={self.train.target_accuracy} is a classifier's test accuracy; "
                "model.task=regression has none (use train.patience on a validation set)",
            )
        if self.data.source == "digits" or self.data.source == "synthetic":
            raise Invalid(
                ("data.source", "model.task"),
                f"data.source={self.data.source} holds class labels; model.task=regression needs a "
                "file source (.csv, .npz, .parquet) with numeric targets",
            )
        return self

    @model_validator(mode="after")
    def _patience_needs_a_validation_split(self):
        if (
            self.train.patience is not None
            and self.data.validation_fraction == 0
            and self.data.validation_column is None
        ):
            raise Invalid(
                ("train.patience", "data.validation_fraction"),
                f"train.patience={self.train.patience} stops on the validation loss and needs "
                "data.validation_fraction > 0 (e.g. 0.1) or data.validation_column, got neither",
            )
        if self.train.lr_schedule == "cosine" and self.train.lr_min >= self.train.lr:
            raise Invalid(
                ("train.lr_schedule", "train.lr_min", "train.lr"),
                f"train.lr_min must be below train.lr ({self.train.lr}) for the cosine schedule "
                f"to decay, got {self.train.lr_min}",
            )
        return self

    @model_validator(mode="after")
    def _cnn_needs_an_image_shape(self):
        # told from the config, so that no engine starts (a JVM, mpiexec's ranks) before the payload finds it
        name = Path(self.data.source).name.removesuffix(".gz")
        knows_its_shape = self.data.source == "digits" or ("-idx" in name and name.endswith("-ubyte"))
        if self.model.type == "cnn" and self.data.image_shape is None and not knows_its_shape:
            raise Invalid(
                ("model.type", "data.image_shape", "data.source"),
                f"model.type=cnn needs the image shape of data.source {self.data.source}: set "
                "data.image_shape to [H, W] or [C, H, W] (digits and IDX image files give theirs)",
            )
        return self

    @model_validator(mode="after")
    def _device_needs_a_module(self):
        if self.train.device != "cpu" and self.model.type != "module":
            raise Invalid(
                ("train.device", "model.type"),
                f"train.device={self.train.device} places a model.type=module on a GPU; "
                f"model.type={self.model.type} trains on the CPU: use train.device=cpu",
            )
        return self

    @model_validator(mode="after")
    def _sub_networks_need_an_mlp(self):
        if self.model.type != "mlp" and self.combine in ("ist", "split"):
            raise Invalid(
                ("combine", "model.type"),
                f"combine={self.combine} splits an MLP's hidden units and needs model.type=mlp, "
                f"got model.type={self.model.type}",
            )
        return self

    @model_validator(mode="after")
    def _ist_needs_a_group_per_mapper(self):
        if self.combine != "ist":
            return self
        if not self.model.hidden:
            raise Invalid(
                ("combine", "model.hidden"),
                "combine=ist splits the hidden layers into one group per mapper; model.hidden=[] has none",
            )
        if min(self.model.hidden) < self.mappers:
            raise Invalid(
                ("combine", "mappers", "model.hidden"),
                f"combine=ist gives each of the {self.mappers} mappers its own group of every hidden "
                f"layer; model.hidden={self.model.hidden} has a layer with fewer units than mappers",
            )
        return self

    @model_validator(mode="after")
    def _sync_needs_a_synchronous_engine(self):
        if not self.has_sync_rounds:
            return self
        what = "combine=gradient" if self.combine == "gradient" else f"train.sync_rounds={self.train.sync_rounds}"
        if self.engine not in SYNC_ENGINES:
            raise Invalid(
                ("combine", "train.sync_rounds", "engine"),
                f"{what} syncs every mini-batch and needs engine local, mpi or spark, got engine={self.engine}",
            )
        return self

    @property
    def has_sync_rounds(self) -> bool:
        """Does the run have any synchronous round (``combine: gradient``, or ``train.sync_rounds > 0``)?"""
        return self.combine == "gradient" or self.train.sync_rounds > 0

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="python")

    def shareable_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` with a Spark Connect token (``spark.remote``'s ``;token=``) hidden: what goes to
        config.yaml, MLflow and logs."""
        tree = self.to_dict()
        if tree["spark"]["remote"]:
            tree["spark"]["remote"] = redact_url(tree["spark"]["remote"])
        return tree


def valid_keys(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    """All dotted keys, e.g. ``['engine', ..., 'data.source', ...]``."""
    keys = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += valid_keys(ann, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def suggest_key(key: str, candidates: list[str] | None = None) -> str:
    """'; did you mean ...?' for the candidate closest to ``key`` (default: the config's keys), or ''."""
    keys = (
        candidates
        if candidates is not None
        else (valid_keys() + sorted({k.split(".")[0] for k in valid_keys() if "." in k}))
    )
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    if not close:  # a right leaf under the wrong section, e.g. 'lr' for 'train.lr'
        by_leaf: dict[str, str] = {}
        for k in keys:  # the first section that has the leaf: train.lr before server.lr
            by_leaf.setdefault(k.rsplit(".", 1)[-1], k)
        leaf = difflib.get_close_matches(key.rsplit(".", 1)[-1], list(by_leaf), n=1, cutoff=0.6)
        close = [by_leaf[leaf[0]]] if leaf else []
    return f"; did you mean '{close[0]}'?" if close else ""


def _format_error(err: Mapping[str, Any], where: str) -> str:
    key = ".".join(str(p) for p in err["loc"])
    where = f"{where}: " if where else ""
    if err["type"] == "extra_forbidden":
        return f"{where}unknown config key '{key}'{suggest_key(key)}"
    if err["type"] == "value_error":  # raised by our own validators, already phrased
        return where + str(err["ctx"]["error"])
    return f"{where}config key '{key}': {err['msg']}, got {err['input']!r}"


def _error_keys(err: Mapping[str, Any]) -> tuple[str, ...]:
    """The dotted keys an error is about: a validator's :class:`Invalid` keys, else the field's own."""
    error = err.get("ctx", {}).get("error")
    if isinstance(error, Invalid):
        return error.keys
    return (".".join(str(p) for p in err["loc"]),)


def _given(key: str, keys: dict[str, str]) -> str | None:
    """Where ``key`` was given (``keys``: dotted key -> source), also when a section or a mapping holding it
    was given whole (``spark.conf``), or None for a default."""
    for given, source in keys.items():
        if given == key or given.startswith(key + ".") or key.startswith(given + "."):
            return source
    return None


def blame(keys: tuple[str, ...], overridden: dict[str, str], from_file: dict[str, str], source: str) -> str:
    """The sources of the values an error weighs: each key's ``--set`` (or API) override first, else the conf
    file that gave it (``from_file``: dotted key -> file, ``extends`` chains included), joined with 'and';
    ``source`` when every one of them is a default."""
    found = []
    for key in keys:
        where = _given(key, overridden) or _given(key, from_file)
        if where is not None and where not in found:
            found.append(where)
    return " and ".join(found) if found else source


def _parse_override(item: str, where: str = "--set") -> list[tuple[str, Any]]:
    """``[(dotted key, value)]`` of one ``--set key=value``; a section given a mapping
    (``train={rounds: 2, lr: 0.05}``) sets each of its keys. ``where`` names the overrides in errors."""
    if "=" not in item:
        raise ConfigError(f"{where} expects key=value (e.g. --set mappers=4), got {item!r}")
    key, raw = item.split("=", 1)
    key = key.strip()
    try:
        value = _yaml(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    if key in valid_keys():
        return [(key, value)]
    section_keys = [k for k in valid_keys() if k.startswith(key + ".")]
    if not section_keys:
        raise ConfigError(f"{where}: unknown config key '{key}'{suggest_key(key)}")
    if not isinstance(value, dict):
        example = section_keys[0].split(".")[-1]
        raise ConfigError(
            f"{where}: '{key}' is a section: set one of its keys ({key}.{example}=...) or give it a "
            f"mapping ({key}={{{example}: ...}}), got {raw!r}"
        )
    pairs = []
    for sub, sub_value in value.items():
        full = f"{key}.{sub}"
        if full not in valid_keys() and not any(k.startswith(full + ".") for k in valid_keys()):
            raise ConfigError(f"{where}: unknown config key '{full}'{suggest_key(full)}")
        pairs += (
            [(full, sub_value)]
            if full in valid_keys() or not isinstance(sub_value, dict)
            else _parse_override(f"{full}={yaml.safe_dump(sub_value, default_flow_style=True).strip()}", where)
        )
    return pairs


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        child = node.get(p)
        if not isinstance(child, dict):
            child = node[p] = {}
        node = child
    node[parts[-1]] = value


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file (safe loader) into a dict; errors name the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot be read ({exc.strerror})") from None
    try:
        tree = _yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {path}: not valid YAML{where}") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {path}: expected a mapping of keys, got {type(tree).__name__}")
    return tree


def build_config(
    tree: dict[str, Any],
    overrides: Sequence[str] = (),
    source: str = "",
    overrides_source: str = "--set",
    file_keys: dict[str, str] | None = None,
) -> Config:
    """Validate a nested dict plus ``key=value`` overrides into a :class:`Config`.

    An error names where the values it weighs came from: ``overrides_source``
    (``--set``; ``overrides`` for the Python API) for an overridden key,
    ``file_keys[key]`` (the conf file of an ``extends`` chain that set it)
    for a key of ``tree``, else ``source`` (``tree``'s origin).
    """
    tree = {k: (dict(v) if isinstance(v, dict) else v) for k, v in tree.items()}
    overridden: dict[str, str] = {}
    for item in overrides:
        for key, value in _parse_override(item, overrides_source):
            _set_dotted(tree, key, value)
            overridden[key] = overrides_source
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        first = exc.errors()[0]
        in_tree = file_keys if file_keys is not None else {key: source for key in flatten(tree)}
        raise ConfigError(_format_error(first, blame(_error_keys(first), overridden, in_tree, source))) from None


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_layered(path: str | Path, seen: tuple = ()) -> dict[str, Any]:
    """Read a conf file and, first, the file its ``extends:`` key names (relative to it)."""
    return read_layered_sources(path, seen)[0]


def read_layered_sources(path: str | Path, seen: tuple = ()) -> tuple[dict[str, Any], dict[str, str]]:
    """:func:`read_layered`'s tree and, for each dotted key it sets, the file of the chain that set it."""
    path = Path(path)
    tree = read_yaml(path)
    parent = tree.pop("extends", None)
    own = {key: str(path) for key in flatten(tree)}
    if parent is None:
        return tree, own
    if not isinstance(parent, str):
        raise ConfigError(f"config file {path}: 'extends' must name a conf file, got {parent!r}")
    parent_path = path.parent / parent
    if parent_path.resolve() in seen:
        raise ConfigError(f"config file {path}: 'extends: {parent}' makes a cycle")
    base, base_keys = read_layered_sources(parent_path, seen + (path.resolve(),))
    return _merge(base, tree), {**base_keys, **own}


def load_config(path: str | Path | None, overrides: Sequence[str] = (), overrides_source: str = "--set") -> Config:
    """Load ``path`` (its ``extends:`` chain first) and apply ``key=value`` overrides.

    ``path=None`` means the built-in defaults of :class:`Config`. An error
    names the source of each value it weighs: ``overrides_source`` (``--set``
    on the command line) for an override, else the conf file that set it.
    """
    if path is None:
        return build_config({}, overrides, "", overrides_source)
    tree, file_keys = read_layered_sources(path)
    return build_config(tree, overrides, str(path), overrides_source, file_keys)


def diff_keys(a: Config, b: Config) -> list[str]:
    """Dotted keys whose values differ between two configs."""
    da, db = flatten(a.to_dict()), flatten(b.to_dict())
    return sorted(k for k in da.keys() | db.keys() if da.get(k) != db.get(k))


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """A nested config dict as dotted keys: ``{"train": {"lr": 0.1}}`` -> ``{"train.lr": 0.1}``."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out
