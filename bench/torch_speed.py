"""The torch backend against a plain torch loop, and the numpy backend beside them: seconds per epoch.

    python bench/torch_speed.py            # MLP 784-128-10 at batch 32 and 256 on 60000x784, CNN on 8000 28x28
    python bench/torch_speed.py --smoke    # tiny sizes: seconds, for CI

Side by side in one run, on one thread, the same data, model, initial
weights, mini-batch order (:func:`nnlib.core.train.batch_indices` with the
same rng) and plain SGD (lr 0.01):

- ``nnlib torch``: :func:`nnlib.core.train.local_sgd` on the torch backend
  (its fast loop, :meth:`nnlib.core.torch_mlp.TorchModel.train_steps`);
- ``plain torch``: ``nn.Sequential`` (``nn.Linear``, ``nn.Conv2d``, ``nn.MaxPool2d``)
  with ``torch.optim.SGD``, the batch gathered by torch indexing;
- ``nnlib numpy``: :func:`nnlib.core.train.local_sgd` on the numpy backend.

Each system trains one epoch per repeat, the systems taking turns; the
figure is the median. Targets (issue 24): nnlib torch within 1.1x of plain
torch for all three, numpy CNN within 2x of plain torch.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits
from torch import nn

from nnlib.core.backends import get_backend
from nnlib.core.cnn import ConvSpec
from nnlib.core.mlp import ModelSpec
from nnlib.core.optim import SGD
from nnlib.core.params import LayerSpec, init_params, unpack
from nnlib.core.train import LocalSchedule, batch_indices, local_sgd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median, write_result  # noqa: E402

LR = 0.01


def plain_module(layers) -> nn.Module:
    """The same network as plain torch modules, holding ``init_params``'s weights."""
    if isinstance(layers, ConvSpec):
        mods, fan_in = [], layers.image_shape[0]
        for ch in layers.channels:
            mods += [nn.Conv2d(fan_in, ch, layers.kernel, padding=layers.kernel // 2), nn.ReLU(), nn.MaxPool2d(2)]
            fan_in = ch
        mods += [nn.Flatten(), nn.Linear(layers.n_flat, layers.n_classes)]
        net = nn.Sequential(nn.Unflatten(1, layers.image_shape), *mods)
    else:
        mods = []
        for a, b in zip(layers.sizes[:-1], layers.sizes[1:], strict=True):
            mods += [nn.Linear(a, b), nn.ReLU()]
        net = nn.Sequential(*mods[:-1])
    arrays = unpack(init_params(layers, 0), layers)
    with torch.no_grad():
        for p, a in zip(net.parameters(), arrays, strict=True):
            p.copy_(torch.from_numpy(a.T.copy() if a.ndim == 2 else a))  # nn.Linear holds (out, in)
    return net


def plain_epoch(layers, x: np.ndarray, y: np.ndarray, batch: int) -> float:
    """Seconds of one epoch of the plain torch loop."""
    net = plain_module(layers)
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    batches = batch_indices(len(y), LocalSchedule(batch), np.random.default_rng(1))
    start = time.perf_counter()
    loss_sum = 0.0
    for idx in batches:
        it = torch.from_numpy(idx)
        opt.zero_grad()
        loss = F.cross_entropy(net(xt[it]), yt[it])
        loss.backward()
        opt.step()
        loss_sum += loss.item() * len(idx)
    return time.perf_counter() - start


def nnlib_epoch(backend_name: str, layers, x: np.ndarray, y: np.ndarray, batch: int) -> float:
    """Seconds of one epoch of nnlib's local loop on ``backend_name``."""
    backend = get_backend(backend_name, ModelSpec(layers))
    params = init_params(layers, 0)
    start = time.perf_counter()
    local_sgd(backend, params, None, SGD(), x, y, LocalSchedule(batch), LR, np.random.default_rng(1))
    return time.perf_counter() - start


def compare(name: str, layers, x, y, batch: int, repeats: int, numpy_too: bool) -> dict:
    """Median seconds per epoch of each system, taking turns, after one warm-up epoch each."""
    systems = {
        "nnlib_torch": lambda: nnlib_epoch("torch", layers, x, y, batch),
        "plain_torch": lambda: plain_epoch(layers, x, y, batch),
    }
    if numpy_too:
        systems["nnlib_numpy"] = lambda: nnlib_epoch("numpy", layers, x, y, batch)
    times = {k: [] for k in systems}
    for r in range(repeats + 1):
        for k, fn in systems.items():
            t = fn()
            if r:
                times[k].append(t)
    row = {"model": name, "params": layers.n_params, "n_samples": len(y), "batch": batch, "repeats": repeats}
    row.update({f"{k}_s": median(v) for k, v in times.items()})
    row["torch_ratio"] = row["nnlib_torch_s"] / row["plain_torch_s"]
    if numpy_too:
        row["numpy_ratio"] = row["nnlib_numpy_s"] / row["plain_torch_s"]
    return row


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: seconds, for CI")
    args = parser.parse_args(argv)
    n_mlp, n_cnn, repeats = (2000, 256, 1) if args.smoke else (60000, 8000, 5)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n_mlp, 784)).astype(np.float32)
    y = rng.integers(0, 10, n_mlp)
    rows = []
    with threadpool_limits(1, user_api="blas"):
        torch.set_num_threads(1)
        mlp = LayerSpec((784, 128, 10))
        for batch in (32, 256):
            rows.append(compare("mlp 784-128-10", mlp, x, y, batch, repeats, numpy_too=True))
            print(rows[-1], flush=True)
        cnn = ConvSpec((1, 28, 28), (16, 32), 5, 10)
        rows.append(compare("cnn (16, 32) k5", cnn, x[:n_cnn], y[:n_cnn], 32, repeats, numpy_too=True))
        print(rows[-1], flush=True)
    result = {"threads": 1, "lr": LR, "optimizer": "SGD", "torch": torch.__version__, "rows": rows}
    write_result("smoke/torch_speed" if args.smoke else "torch_speed", result)
    for r in rows:
        print(
            f"{r['model']:16s} batch {r['batch']:4d}  nnlib torch {r['nnlib_torch_s']:.3f} s  "
            f"plain torch {r['plain_torch_s']:.3f} s  ({r['torch_ratio']:.2f}x)  "
            f"nnlib numpy {r['nnlib_numpy_s']:.3f} s ({r['numpy_ratio']:.2f}x)"
        )
    return result


if __name__ == "__main__":
    main()
