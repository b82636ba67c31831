"""Wire forms for engines that cross process boundaries by files and text lines.

- A :class:`RoundPayload` travels as an ``.npz`` file (read with pickle
  disabled): the weights as float32 arrays, everything else as scalars.
- A :class:`MapperResult` travels as a JSON-safe dict whose arrays are the
  base64 of their raw little-endian float32 bytes (compact and exact, unlike
  JSON lists of floats).
"""

from __future__ import annotations

import base64
import io

import numpy as np

from nnlib.core.mlp import ModelSpec
from nnlib.core.params import DTYPE, LayerSpec
from nnlib.core.train import LocalSchedule
from nnlib.tasks import MapperResult, RoundPayload


def encode_array(a: np.ndarray | None) -> str | None:
    """float32 vector -> base64 text (``None`` stays ``None``)."""
    if a is None:
        return None
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f4").tobytes()).decode("ascii")


def decode_array(text: str | None) -> np.ndarray | None:
    """Inverse of :func:`encode_array`."""
    if text is None:
        return None
    return np.frombuffer(base64.b64decode(text), dtype="<f4").astype(DTYPE)


def encode_result(res: MapperResult) -> dict:
    out = dict(vars(res))
    out["params"] = encode_array(res.params)
    out["velocity"] = encode_array(res.velocity)
    return out


def decode_result(d: dict) -> MapperResult:
    d = dict(d)
    d["params"] = decode_array(d["params"])
    d["velocity"] = decode_array(d["velocity"])
    return MapperResult(**d)


def payload_to_bytes(p: RoundPayload) -> bytes:
    arrays = {
        "round_index": np.int64(p.round_index), "seed": np.int64(p.seed), "params": p.params,
        "layer_sizes": np.asarray(p.model.layers.sizes, np.int64), "activation": np.str_(p.model.activation),
        "loss": np.str_(p.model.loss), "l2": np.float64(p.model.l2), "backend": np.str_(p.backend),
        "batch_size": np.int64(p.schedule.batch_size), "local_epochs": np.int64(p.schedule.local_epochs),
        "local_steps": np.int64(-1 if p.schedule.local_steps is None else p.schedule.local_steps),
        "lr": np.float64(p.lr), "momentum": np.float64(p.momentum),
    }
    if p.velocity is not None:
        arrays["velocity"] = p.velocity
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def payload_from_file(path) -> RoundPayload:
    with np.load(path, allow_pickle=False) as f:
        steps = int(f["local_steps"])
        return RoundPayload(
            round_index=int(f["round_index"]), seed=int(f["seed"]), params=f["params"].astype(DTYPE),
            velocity=f["velocity"].astype(DTYPE) if "velocity" in f.files else None,
            model=ModelSpec(LayerSpec(tuple(int(s) for s in f["layer_sizes"])), str(f["activation"]),
                            str(f["loss"]), float(f["l2"])),
            backend=str(f["backend"]),
            schedule=LocalSchedule(int(f["batch_size"]), int(f["local_epochs"]), None if steps < 0 else steps),
            lr=float(f["lr"]), momentum=float(f["momentum"]))
