"""The torch backend of ``model.type: module``: a user's ``nn.Module`` trained on the flat vector.

The layout (which arrays, in which order) is :class:`nnlib.core.module_spec.ModuleSpec`.
Inside a call the flat float32 vector is bound to the module by name with
``torch.func.functional_call``: the parameters as views of one tensor that
requires a gradient, the floating-point buffers as views of the caller's
vector itself. So in training mode (``module.train()``) a BatchNorm's
running statistics are updated in place in the caller's vector, as a
``torch.optim`` loop updates them in the module, and their gradient is 0
(the optimizer leaves them; the combine rules average them with the
weights). Scoring runs in ``module.eval()`` mode and changes nothing.

Devices (``train.device``): :func:`pick_device` says where one process
computes. The weights still come in and go out as float32 numpy on the host.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from nnlib.core.mlp import ModelSpec
from nnlib.core.module_spec import ModuleSpec
from nnlib.core.params import DTYPE
from nnlib.core.torch_mlp import TorchModel, data_loss
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
        raise ConfigError(f"train.device=cuda: this process sees no CUDA GPU (torch {torch.__version__}, {build}, "
                          "torch.cuda.is_available() is False); use train.device=cpu or auto")
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


class _ContractModule(TorchModel):
    """The user's module through :class:`TorchModel`'s module contract (``make_module``)."""

    eval_chunk = EVAL_CHUNK

    def make_module(self) -> torch.nn.Module:
        return _Reshape(self.spec.layers.build(), self.spec.layers.input_shape)


class _BoundModule(TorchModel):
    """The module on the flat vector through ``torch.func.functional_call``, for a :class:`TorchModel` without
    ``make_module`` (the backend before module-based torch models)."""

    def __init__(self, spec: ModelSpec):
        super().__init__(spec)
        self.layout: ModuleSpec = spec.layers
        self.module = self.layout.build()
        self._names = self.layout.names()
        self._n_weights = self.layout.n_weights
        self._devices: dict[bool, torch.device] = {}

    def _device(self, training: bool) -> torch.device:
        # a Spark worker may run tasks given different GPUs: look again for every call in a task
        if training and _spark_gpus() is not None:
            return pick_device(self.layout.device)
        if training not in self._devices:
            self._devices[training] = (pick_device if training else scoring_device)(self.layout.device)
        return self._devices[training]

    def _bind(self, weights: torch.Tensor, buffers: torch.Tensor) -> dict[str, torch.Tensor]:
        """Name -> view of ``weights`` (the parameters) or ``buffers`` (the floating buffers), in flat order."""
        out, n = {}, self._n_weights
        for name, (start, stop, shape) in zip(self._names, self.layout.offsets):
            out[name] = weights[start:stop].view(shape) if start < n else buffers[start - n:stop - n].view(shape)
        return out

    def _forward(self, weights: torch.Tensor, buffers: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, *self.layout.input_shape)
        return torch.func.functional_call(self.module, self._bind(weights, buffers), (x,))

    def _logits(self, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Outputs ``(n, n_classes)`` in eval mode (BatchNorm uses its running statistics)."""
        self.module.eval()
        n = self._n_weights
        return self._forward(flat[:n], flat[n:].clone(), x)

    def _eval_logits(self, flat: np.ndarray, x: np.ndarray) -> torch.Tensor:
        """The logits of every sample without a graph, ``EVAL_CHUNK`` rows at a time, on the host."""
        device = self._device(False)
        self.module.to(device)
        w = torch.from_numpy(np.ascontiguousarray(flat)).to(device)
        with torch.no_grad():
            return torch.cat([self._logits(w, torch.from_numpy(x[i:i + EVAL_CHUNK]).to(device)).cpu()
                              for i in range(0, max(len(x), 1), EVAL_CHUNK)])

    def loss_and_grad(self, flat: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        """Data loss on ``(x, y)`` in training mode and the gradient of loss + L2 penalty, flat ``(n_params,)``.

        ``flat``'s buffer values (after the parameters) are updated in place
        by the forward pass (BatchNorm's running statistics); their gradient is 0.
        """
        device = self._device(True)
        self.module.to(device).train()
        n = self._n_weights
        host = torch.from_numpy(flat)
        weights = host[:n].to(device).detach().requires_grad_(True)
        buffers = host[n:] if device.type == "cpu" else host[n:].to(device)
        xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
        loss = data_loss(self.spec.loss, self._forward(weights, buffers, xt), yt)
        objective = loss
        if self.spec.l2:
            mask = self._mask[:n].to(device)
            objective = loss + 0.5 * self.spec.l2 * ((weights * mask) ** 2).sum()
        (grad,) = torch.autograd.grad(objective, weights)
        if device.type != "cpu":
            host[n:] = buffers.cpu()
        out = np.zeros_like(flat)
        out[:n] = grad.cpu().numpy()
        return float(loss.detach()), out.astype(DTYPE, copy=False)


#: The torch backend of a user's ``nn.Module`` (``spec.layers`` a :class:`ModuleSpec`)
TorchModule = _ContractModule if hasattr(TorchModel, "make_module") else _BoundModule
