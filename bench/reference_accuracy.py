"""The accuracy a tuned single-process MLP reaches on digits: the target of the manual's recipe
(docs/pages/guide/optimizers.md).

    python bench/reference_accuracy.py           # 5 seeds
    python bench/reference_accuracy.py --smoke   # 1 seed

scikit-learn's ``MLPClassifier`` with its defaults (one hidden layer of 100
ReLU units, Adam at 0.001, L2 1e-4, batch 200, up to 500 epochs with its own
early stopping on the training loss) on exactly the split nnlib trains on
(``load_dataset`` of the digits with each seed: the same 80/20 split and
standardisation). Reported: the test accuracy per seed and the median, and
the same for nnlib on one mapper (plain sequential training) with the
recipe's last settings, for scale.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_result  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    from nnlib.config import load_config
    from nnlib.data.dataset import load_dataset
    from nnlib.driver import run

    seeds = [0] if args.smoke else [0, 1, 2, 3, 4]
    rows = []
    for seed in seeds:
        config = load_config(None, [f"seed={seed}"])
        data = load_dataset(config.data, seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf = MLPClassifier(max_iter=500, random_state=seed).fit(data.x_train, data.y_train)
        one = run(
            load_config(
                None,
                [
                    f"seed={seed}",
                    "mappers=1",
                    "train.rounds=30",
                    "model.hidden=[128]",
                    "train.lr=0.3",
                    "train.lr_schedule=cosine",
                ],
            ),
            log=lambda _m: None,
        )
        rows.append(
            {
                "seed": seed,
                "sklearn_mlp": float(clf.score(data.x_test, data.y_test)),
                "nnlib_1_mapper": one.summary["final_test_accuracy"],
            }
        )
        print(rows[-1])
    result = {
        "rows": rows,
        "median_sklearn_mlp": statistics.median(r["sklearn_mlp"] for r in rows),
        "median_nnlib_1_mapper": statistics.median(r["nnlib_1_mapper"] for r in rows),
    }
    print({k: v for k, v in result.items() if k != "rows"})
    write_result("smoke/reference_accuracy" if args.smoke else "reference_accuracy", result)


if __name__ == "__main__":
    main()
