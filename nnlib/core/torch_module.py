"""The torch backend of ``model.type: module``: a user's ``nn.Module`` trained on the flat vector.

The layout (which arrays, in which order) is :class:`nnlib.core.module_spec.ModuleSpec`;
the training and scoring are :class:`nnlib.core.torch_mlp.TorchModel`'s: the
flat float32 vector is bound to the module as views, its parameters then its
floating buffers. In a local round (``train_steps``) a BatchNorm's running
statistics are updated in place by the module's forward in ``train()``
mode, as in a ``torch.optim`` loop, and the optimizer steps the parameters
alone; the combine rules then average the statistics with the weights. In a
synchronous round each mapper keeps its own statistics
(``loss_and_grad(..., update_buffers=True)``) and
:func:`nnlib.rounds.mapper.sync_shards` averages them at the round's end.
Scoring runs in ``eval()`` mode and changes nothing.

Devices (``train.device``): :func:`pick_device` says where one process
computes (Spark's task GPU, MPI's local rank, ``auto``); a mapper trains
there. The weights come in and go out as float32 numpy on the host.
"""

from __future__ import annotations

import os

import torch

from nnlib.core.mlp import ModelSpec
from nnlib.core.module_spec import ModuleSpec
from nnlib.core.torch_mlp import TorchModel
from nnlib.errors import ConfigError

DEVICES = ("cpu", "cuda", "auto")
EVAL_CHUNK = 1024  # samples per forward pass when scoring
LOCAL_RANK_VARIABLES = ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID", "LOCAL_RANK")


def _spark_gpus() -> list[str] | None:
    """The GPU addresses Spark gave the running task (``TaskContext.resources()["gpu"]``), or None outside a
    Spark task (pyspark not imported, or no task running) or for a task given none."""
    import sys

    if "pyspark" not in sys.modules:
        return None
    try:
        from pyspark import TaskContext

        context = TaskContext.get()
        gpu = context.resources().get("gpu") if context is not None else None
    except Exception:  # noqa: BLE001 - not in a task, or a Spark without resources
        return None
    return list(gpu.addresses) if gpu is not None and gpu.addresses else None


def _local_rank() -> int | None:
    for name in LOCAL_RANK_VARIABLES:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return None


def pick_device(setting: str) -> torch.device:
    """The device this process trains on for ``train.device`` = ``setting`` (``cpu``, ``cuda`` or ``auto``).

    ``cuda``: the GPU Spark assigned the running task (its first address in
    ``TaskContext.resources()["gpu"]``), else under MPI the GPU of the
    process's local rank (``OMPI_COMM_WORLD_LOCAL_RANK`` modulo the GPU
    count), else ``cuda:0``. ``auto``: the same when this process has a GPU
    (a Spark task only when Spark gave it one), else the CPU. Raises
    :class:`ConfigError` (one line) for ``cuda`` without a usable GPU or an
    unknown setting.
    """
    if setting not in DEVICES:
        raise ConfigError(f"train.device must be one of {', '.join(DEVICES)}, got {setting!r}")
    if setting == "cpu":
        return torch.device("cpu")
    available = torch.cuda.is_available()
    gpus = _spark_gpus()
    if not available:
        if setting == "auto":
            return torch.device("cpu")
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        given = "" if gpus is None else f"Spark gave this task GPU {','.join(gpus)}, but "
        raise ConfigError(
            f"train.device=cuda: {given}this process sees no CUDA GPU (torch {torch.__version__}, "
            f"{build}, torch.cuda.is_available() is False); use train.device=cpu or auto"
        )
    if gpus is not None:
        return torch.device(f"cuda:{gpus[0]}")
    if setting == "auto" and "pyspark" in __import__("sys").modules and _in_spark_task():
        return torch.device("cpu")  # a Spark task that was given no GPU
    rank = _local_rank()
    return torch.device(f"cuda:{(rank or 0) % torch.cuda.device_count()}")


def _in_spark_task() -> bool:
    try:
        from pyspark import TaskContext

        return TaskContext.get() is not None
    except Exception:  # noqa: BLE001
        return False


def scoring_device(setting: str) -> torch.device:
    """Where a process scores: ``setting``'s device when this process has it, else the CPU (a Spark driver
    without a GPU scores on its CPU while the executors train on theirs)."""
    try:
        return pick_device(setting)
    except ConfigError:
        return torch.device("cpu")


class _Reshape(torch.nn.Module):
    """The user's module behind a reshape: rows ``(n, n_features)`` in, as nnlib's data holds them; the module
    sees ``(n, *input_shape)``. Its parameters keep their order (``net.`` before each name)."""

    def __init__(self, net: torch.nn.Module, input_shape: tuple[int, ...]):
        super().__init__()
        self.net = net
        self.input_shape = tuple(input_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.reshape(-1, *self.input_shape))


class TorchModule(TorchModel):
    """The torch backend of a user's ``nn.Module`` (``spec.layers`` a :class:`ModuleSpec`), through
    :class:`TorchModel`'s contract: the flat vector is the module's parameters then floating buffers, bound as
    views; training in ``train()`` mode, scoring in ``eval()`` mode.

    ``train.device``: a mapper's rounds (:meth:`train_steps`, and the
    gradients of a synchronous round) run on :func:`pick_device`'s device,
    chosen when the process first trains (so a driver without a GPU can
    still score on its CPU); the weights, the optimizer state and the shard
    are copied there each round and the weights and state back, as float32.
    Scoring runs on the host.
    """

    eval_chunk = EVAL_CHUNK

    def __init__(self, spec: ModelSpec):
        super().__init__(spec)
        self._device: torch.device | None = None
        self._device_chosen = False

    def train_device(self) -> torch.device | None:
        if not self._device_chosen:
            device = pick_device(self._layers.device)  # raises (one line) for cuda without a GPU
            self._device = None if device.type == "cpu" else device
            self._device_chosen = True
        return self._device

    def make_module(self) -> torch.nn.Module:
        return _Reshape(self._layers.build(), self._layers.input_shape)

    @property
    def _layers(self) -> ModuleSpec:
        layers = self.spec.layers
        assert isinstance(layers, ModuleSpec)  # model.type: module
        return layers
