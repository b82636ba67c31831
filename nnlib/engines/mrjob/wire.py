"""Wire forms for engines that cross process boundaries by files and text lines (mrjob).

- A :class:`RoundPayload` travels as an ``.npz`` file (read with pickle
  disabled): the weights as float32 arrays, everything else as scalars.
- A :class:`MapperResult` travels as a JSON-safe dict: its stats as plain
  numbers and text, its arrays as the base64 of their raw little-endian
  float32 bytes (compact and exact, unlike JSON lists of floats).
"""

from __future__ import annotations

import base64
import dataclasses
import io
from typing import Any, cast, overload

import numpy as np

from nnlib.core.cnn import ConvSpec
from nnlib.core.mlp import ModelSpec
from nnlib.core.module_spec import ModuleSpec
from nnlib.core.optim import from_json, to_json
from nnlib.core.params import DTYPE, LayerSpec, Layout
from nnlib.core.train import LocalSchedule
from nnlib.rounds.payload import MapperResult, MapperStats, RoundPayload, SubnetPlan
from nnlib.rounds.schedule import RoundPlan, SubNetworks

# every field of ModelSpec but its layout, by name and type: a field added to ModelSpec travels without an edit here
_MODEL_SCALARS: dict[str, type] = {f.name: type(f.default) for f in dataclasses.fields(ModelSpec) if f.name != "layers"}


def encode_array(a: np.ndarray | None) -> str | None:
    """float32 vector -> base64 text (``None`` stays ``None``)."""
    if a is None:
        return None
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f4").tobytes()).decode("ascii")


@overload
def decode_array(text: str) -> np.ndarray: ...
@overload
def decode_array(text: None) -> None: ...
def decode_array(text: str | None) -> np.ndarray | None:
    """Inverse of :func:`encode_array`."""
    if text is None:
        return None
    return np.frombuffer(base64.b64decode(text), dtype="<f4").astype(DTYPE)


def encode_stats(stats: MapperStats) -> dict:
    return dataclasses.asdict(stats)


def decode_stats(d: dict) -> MapperStats:
    return MapperStats(**d)


def encode_result(res: MapperResult) -> dict:
    """Every field of a :class:`MapperResult` by name: its stats as a dict, its arrays as base64 text, the rest
    (the shard's total sample weight) as plain JSON numbers."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(res):
        value = getattr(res, f.name)
        if f.name == "stats":
            out[f.name] = encode_stats(value)
        elif isinstance(value, np.ndarray):
            out[f.name] = encode_array(value)
        else:
            out[f.name] = value
    return out


def decode_result(d: dict) -> MapperResult:
    """Inverse of :func:`encode_result`."""
    arrays = {f.name for f in dataclasses.fields(MapperResult) if f.name in ("params", "opt_state")}
    values: dict[str, Any] = {
        name: decode_stats(value) if name == "stats" else decode_array(value) if name in arrays else value
        for name, value in d.items()
    }
    return MapperResult(**values)


def payload_to_bytes(p: RoundPayload) -> bytes:
    local = p.plan.local
    arrays = {
        "round_index": np.int64(p.plan.index),
        "synchronous": np.bool_(p.plan.synchronous),
        "seed": np.int64(p.seed),
        "params": p.params,
        **_layout_arrays(p.model.layers),
        **{f"model_{name}": np.asarray(getattr(p.model, name)) for name in _MODEL_SCALARS},
        "backend": np.str_(p.backend),
        "batch_size": np.int64(local.batch_size),
        "local_epochs": np.int64(local.local_epochs),
        "local_steps": np.int64(-1 if local.local_steps is None else local.local_steps),
        "shuffle": np.str_(local.shuffle),
        "lr": np.float64(p.plan.lr),
        "optimizer": np.str_(to_json(p.optimizer)),
        "part": np.asarray(p.plan.part, np.float64),
        "sub_networks": np.str_(p.plan.sub_networks or ""),
        "restart_optimizer": np.bool_(p.plan.restart_optimizer),
        "proximal_mu": np.float64(p.proximal_mu),
        **_subnet_arrays(p.subnets),
    }
    if p.plan.sync_lrs is not None:
        arrays["sync_lrs"] = p.plan.sync_lrs
    if p.opt_state is not None:
        arrays["opt_state"] = p.opt_state
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _layout_arrays(layers: Layout) -> dict:
    if isinstance(layers, ModuleSpec):  # a user's module: the task imports the callable (search_path helps)
        return {
            "module": np.str_(layers.module),
            "module_kwargs": np.str_(layers.kwargs),
            "input_shape": np.asarray(layers.input_shape, np.int64),
            "n_classes": np.int64(layers.n_classes),
            "search_path": np.str_(layers.search_path),
            "device": np.str_(layers.device),
        }
    if isinstance(layers, ConvSpec):
        return {
            "image_shape": np.asarray(layers.image_shape, np.int64),
            "channels": np.asarray(layers.channels, np.int64),
            "kernel": np.int64(layers.kernel),
            "n_classes": np.int64(layers.n_classes),
        }
    assert isinstance(layers, LayerSpec)  # the three layouts there are
    return {"layer_sizes": np.asarray(layers.sizes, np.int64)}


def _layout(f) -> LayerSpec | ConvSpec | ModuleSpec:
    if "module" in f.files:
        return ModuleSpec(
            str(f["module"]),
            str(f["module_kwargs"]),
            tuple(int(s) for s in f["input_shape"]),
            int(f["n_classes"]),
            str(f["search_path"]),
            str(f["device"]),
        )
    if "layer_sizes" in f.files:
        return LayerSpec(tuple(int(s) for s in f["layer_sizes"]))
    channels, height, width = (int(s) for s in f["image_shape"])
    return ConvSpec(
        (channels, height, width), tuple(int(s) for s in f["channels"]), int(f["kernel"]), int(f["n_classes"])
    )


def _subnet_arrays(plan: SubnetPlan | None) -> dict:
    if plan is None:
        return {"subnet_groups": np.int64(0)}
    arrays: dict[str, Any] = {
        "subnet_groups": np.int64(plan.groups),
        "subnet_scale": np.bool_(plan.scale),
        "subnet_alternating": np.bool_(plan.alternating),
        "subnet_sum_shared": np.bool_(plan.sum_shared),
    }
    for layer, labels in enumerate(plan.labels or ()):
        arrays[f"subnet_labels_{layer}"] = np.asarray(labels, np.int64)
    return arrays


def _subnet_plan(f) -> SubnetPlan | None:
    if not int(f["subnet_groups"]):
        return None
    labels = [
        tuple(int(u) for u in f[k])
        for k in sorted((k for k in f.files if k.startswith("subnet_labels_")), key=lambda k: int(k.rsplit("_", 1)[1]))
    ]
    return SubnetPlan(
        int(f["subnet_groups"]),
        bool(f["subnet_scale"]),
        tuple(labels) or None,
        bool(f["subnet_alternating"]),
        bool(f["subnet_sum_shared"]),
    )


def payload_from_file(path) -> RoundPayload:
    with np.load(path, allow_pickle=False) as f:
        steps = int(f["local_steps"])
        local = LocalSchedule(
            int(f["batch_size"]), int(f["local_epochs"]), None if steps < 0 else steps, str(f["shuffle"])
        )
        plan = RoundPlan(
            int(f["round_index"]),
            bool(f["synchronous"]),
            local,
            float(f["lr"]),
            f["sync_lrs"] if "sync_lrs" in f.files else None,
            cast(SubNetworks, str(f["sub_networks"]) or None),  # as a RoundPlan wrote it
            (float(f["part"][0]), float(f["part"][1])),
            bool(f["restart_optimizer"]),
        )
        return RoundPayload(
            plan=plan,
            seed=int(f["seed"]),
            params=f["params"].astype(DTYPE),
            opt_state=f["opt_state"].astype(DTYPE) if "opt_state" in f.files else None,
            model=ModelSpec(
                _layout(f), **{name: kind(f[f"model_{name}"].item()) for name, kind in _MODEL_SCALARS.items()}
            ),
            backend=str(f["backend"]),
            optimizer=from_json(str(f["optimizer"])),
            subnets=_subnet_plan(f),
            proximal_mu=float(f["proximal_mu"]),
        )
