"""Regression: nnlib's test R² beside scikit-learn's MLPRegressor and a plain torch loop, on the same split.

    python bench/regression.py           # diabetes and make_friedman1 (200,000 rows), 3 seeds
    python bench/regression.py --smoke   # a 2,000-row friedman set and diabetes, 1 seed, 2 epochs

Two data sets, each written once as an .npz holding its own test set (``x``,
``y``, ``x_test``, ``y_test``: the last 20% of the rows, rounded up), so that
every system trains and scores on the same rows:

- ``diabetes``: scikit-learn's ``load_diabetes`` (442 rows, 10 features; 89
  test rows);
- ``friedman``: ``make_friedman1(n_samples=200000, noise=1.0,
  random_state=0)`` (5 informative features of 10; 40,000 test rows).

The systems, with the same architecture (an MLP of ReLU layers ``HIDDEN``,
one linear output), optimizer (Adam, betas 0.9/0.999, eps 1e-8, no weight
decay, a constant rate), batch size and total epochs over the training rows:

- nnlib, ``engine=local`` (``nnlib.api.train``), 1 mapper and 4 mappers
  (average combine, the Adam moments averaged with the weights each round);
  ``rounds x local_epochs`` epochs;
- scikit-learn's ``MLPRegressor`` (``solver="adam"``, ``alpha=0``,
  ``max_iter`` = the epochs, its early stopping off);
- a plain torch loop: ``nn.Sequential`` of the same layers, ``torch.optim.Adam``,
  a shuffled pass over the rows an epoch, half the mean squared error (the
  loss nnlib and scikit-learn minimise).

Features and targets are standardised with the training rows' mean and
standard deviation, for all three (nnlib's ``load_columns`` gives the arrays
the other two train on). R² is scikit-learn's ``r2_score`` on the test rows
in the target's own units (nnlib's ``final_test_r2`` is the same formula).
Each system runs with seeds 0, 1, 2 (the seed draws its initial weights and
batch order); the table gives each seed's R², the median, and the median
seconds of training (wall time on this machine, one process, one thread for
torch; not a speed comparison the systems were tuned for).
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DATA, markdown_table, median, write_result  # noqa: E402

HIDDEN = [64, 64]
SEEDS = [0, 1, 2]
TEST_SHARE = 0.2

# nnlib's rounds and local epochs, the batch size and Adam's rate per data set; every system trains for
# rounds x local epochs epochs (diabetes: 353 training rows, which [64, 64] overfits well before 200 epochs)
FULL = {
    "diabetes": dict(rounds=25, local_epochs=2, batch_size=32, lr=0.001),
    "friedman": dict(rounds=10, local_epochs=1, batch_size=64, lr=0.003),
}
SMOKE = {
    "diabetes": dict(rounds=2, local_epochs=1, batch_size=32, lr=0.001),
    "friedman": dict(rounds=2, local_epochs=1, batch_size=64, lr=0.003),
}
FRIEDMAN_ROWS = {"full": 200_000, "smoke": 2_000}
SYSTEMS = ["nnlib, 1 mapper", "nnlib, 4 mappers", "scikit-learn MLPRegressor", "plain torch loop"]
# the target: on the generated set, nnlib's 4 mappers within this of the torch loop's median R²
MARGIN = 0.02


def _write_npz(path: Path, x: np.ndarray, y: np.ndarray) -> Path:
    """``x``, ``y`` as an .npz whose last ``ceil(TEST_SHARE * n)`` rows are its own test set."""
    n_test = math.ceil(TEST_SHARE * len(y))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, x=x[:-n_test], y=y[:-n_test], x_test=x[-n_test:], y_test=y[-n_test:])
    tmp.rename(path)
    return path


def data_set(name: str, rows: int) -> Path:
    """The .npz of ``name`` (``diabetes`` or ``friedman`` of ``rows`` rows) under bench's data folder."""
    path = DATA / ("diabetes.npz" if name == "diabetes" else f"friedman1-{rows}.npz")
    if not path.exists():
        from sklearn.datasets import load_diabetes, make_friedman1

        if name == "diabetes":
            x, y = load_diabetes(return_X_y=True)
        else:
            x, y = make_friedman1(n_samples=rows, noise=1.0, random_state=0)
        _write_npz(path, x, y)
    return path


def nnlib_settings(path: Path, mappers: int, seed: int, s: dict) -> list[str]:
    """The ``--set`` list of an nnlib run of these settings (what a user types)."""
    return [
        f"data.source={path}",
        "model.task=regression",
        f"model.hidden={HIDDEN}",
        "engine=local",
        f"mappers={mappers}",
        f"seed={seed}",
        f"train.rounds={s['rounds']}",
        f"train.local_epochs={s['local_epochs']}",
        f"train.batch_size={s['batch_size']}",
        "train.optimizer=adam",
        f"train.lr={s['lr']}",
    ]


def run_nnlib(path: Path, mappers: int, seed: int, s: dict) -> tuple[float, float]:
    """nnlib's final test R² and its training seconds."""
    from nnlib.api import train

    start = time.perf_counter()
    run = train(None, nnlib_settings(path, mappers, seed, s), write=False)
    return float(run.summary["final_test_r2"]), time.perf_counter() - start


def split(path: Path, seed: int, s: dict):
    """The standardised arrays nnlib trains on (its own reader), for the other two systems."""
    from nnlib.config import load_config
    from nnlib.data.dataset import load_columns

    config = load_config(None, nnlib_settings(path, 1, seed, s))
    return load_columns(config.data, seed, "regression")


def r2(data, z_std: np.ndarray) -> float:
    """scikit-learn's R² of standardised predictions, in the target's own units."""
    from sklearn.metrics import r2_score

    pred = z_std.reshape(-1) * data.target_std[0] + data.target_mean[0]
    return float(r2_score(data.y_test_raw, pred))


def run_sklearn(data, seed: int, s: dict) -> tuple[float, float]:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPRegressor

    epochs = s["rounds"] * s["local_epochs"]
    # alpha=0: no L2, as nnlib's default; n_iter_no_change past max_iter: every epoch runs, as in the others
    reg = MLPRegressor(
        hidden_layer_sizes=tuple(HIDDEN),
        activation="relu",
        solver="adam",
        alpha=0.0,
        batch_size=s["batch_size"],
        learning_rate="constant",
        learning_rate_init=s["lr"],
        max_iter=epochs,
        shuffle=True,
        random_state=seed,
        tol=0.0,
        n_iter_no_change=epochs + 1,
        early_stopping=False,
    )
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter reached: what was asked
        reg.fit(data.x_train, data.y_train)
    seconds = time.perf_counter() - start
    assert reg.n_iter_ == epochs, (reg.n_iter_, epochs)
    return r2(data, reg.predict(data.x_test)), seconds


def run_torch(data, seed: int, s: dict) -> tuple[float, float]:
    import torch
    from torch import nn

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    widths = [data.x_train.shape[1], *HIDDEN]
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(widths[-1], 1))
    opt = torch.optim.Adam(model.parameters(), lr=s["lr"])
    x = torch.from_numpy(np.ascontiguousarray(data.x_train, dtype=np.float32))
    y = torch.from_numpy(data.y_train.astype(np.float32)).reshape(-1, 1)
    start = time.perf_counter()
    for _ in range(s["rounds"] * s["local_epochs"]):
        order = torch.randperm(len(y))
        for i in range(0, len(y), s["batch_size"]):  # the last batch may be short, as in the others
            idx = order[i : i + s["batch_size"]]
            opt.zero_grad()
            loss = 0.5 * nn.functional.mse_loss(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        z = model(torch.from_numpy(np.ascontiguousarray(data.x_test, dtype=np.float32))).numpy()
    return r2(data, z), seconds


def bench(name: str, path: Path, s: dict, seeds: list[int], log) -> list[dict]:
    runs = {system: [] for system in SYSTEMS}
    for seed in seeds:
        data = split(path, seed, s)
        runs[SYSTEMS[0]].append(run_nnlib(path, 1, seed, s))
        runs[SYSTEMS[1]].append(run_nnlib(path, 4, seed, s))
        runs[SYSTEMS[2]].append(run_sklearn(data, seed, s))
        runs[SYSTEMS[3]].append(run_torch(data, seed, s))
        log(f"{name} seed {seed}: " + ", ".join(f"{k} {v[-1][0]:.4f} ({v[-1][1]:.1f} s)" for k, v in runs.items()))
    return [
        {
            "data": name,
            "system": system,
            "seeds": seeds,
            "r2": [r for r, _ in results],
            "median_r2": median(r for r, _ in results),
            "seconds": [t for _, t in results],
            "median_seconds": median(t for _, t in results),
        }
        for system, results in runs.items()
    ]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    size = "smoke" if args.smoke else "full"
    settings = SMOKE if args.smoke else FULL
    seeds = SEEDS[:1] if args.smoke else SEEDS
    result = {"hidden": HIDDEN, "optimizer": "adam", "seeds": seeds, "test_share": TEST_SHARE, "data": {}, "rows": []}
    for name in ("diabetes", "friedman"):
        path = data_set(name, FRIEDMAN_ROWS[size])
        with np.load(path) as f:
            shape = {"train_rows": len(f["y"]), "test_rows": len(f["y_test"]), "features": f["x"].shape[1]}
        s = settings[name]
        result["data"][name] = {
            **shape,
            **s,
            "epochs": s["rounds"] * s["local_epochs"],
            "nnlib_sets": nnlib_settings(Path(path.name), 4, 0, s),
        }
        result["rows"] += bench(name, path, s, seeds, print)
    torch_loop = next(r for r in result["rows"] if r["data"] == "friedman" and r["system"] == SYSTEMS[3])
    four = next(r for r in result["rows"] if r["data"] == "friedman" and r["system"] == SYSTEMS[1])
    result["friedman_4_mappers_minus_torch"] = four["median_r2"] - torch_loop["median_r2"]
    result["margin"] = MARGIN
    result["met"] = result["friedman_4_mappers_minus_torch"] >= -MARGIN
    table = [
        {
            "data": r["data"],
            "system": r["system"],
            "R² per seed": " / ".join(f"{v:.4f}" for v in r["r2"]),
            "median R²": f"{r['median_r2']:.4f}",
            "median s": r["median_seconds"],
        }
        for r in result["rows"]
    ]
    print(markdown_table(table, ["data", "system", "R² per seed", "median R²", "median s"]))
    print(
        f"friedman: 4 mappers minus the torch loop, median R²: {result['friedman_4_mappers_minus_torch']:+.4f} "
        f"(target >= -{MARGIN}: {'met' if result['met'] else 'NOT met'})"
    )
    write_result("smoke/regression" if args.smoke else "regression", result)


if __name__ == "__main__":
    main()
