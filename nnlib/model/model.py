"""A trained model to use: raw features in, classes and probabilities out.

    from nnlib import load_model
    model = load_model("runs/digits")            # a run directory, or a model file
    model.predict(x)          # (n,) int64 classes
    model.predict_proba(x)    # (n, k) float32, rows sum to 1
    model.score(x, y)         # accuracy in [0, 1]

A regressor (``model.task: regression``): ``model.predict(x)`` is float64
``(n,)`` for one target or ``(n, t)``, in the targets' own units (the run's
target standardisation undone); ``model.score(x, y)`` is R² (scikit-learn's
convention); ``model.regression_metrics(x, y)`` the loss, RMSE, MAE and R²
the run reports, to the bit on the run's own test set; ``predict_proba`` is
refused.

``x`` holds raw features, as the training source held them: the run's
standardisation (its training rows' mean and standard deviation) is applied
inside, in float64 and then rounded to float32, exactly as the run
standardised its own test rows, so a run's test set scores the run's
``final_test_accuracy`` to the bit. The network is computed by the numpy
backend (``backend="torch"`` uses the torch one; a user's module, ``model.type: module``,
always the torch one), :data:`CHUNK_ROWS` rows
at a time, so memory does not grow with ``len(x)``. Nothing here imports
Spark.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nnlib.core.backends import get_backend
from nnlib.core.mlp import LOSSES
from nnlib.data.checks import check_features, check_labels
from nnlib.errors import ConfigError, DataError
from nnlib.model import file as model_file
from nnlib.model.file import ModelFile

CHUNK_ROWS = 65536  # rows standardised at a time: memory does not grow with the rows scored
ALIGN_ROWS = 256  # rows per matrix product when scoring, at multiples of it of the source's positions (logits_of)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``(n, k)`` logits, in their dtype (float32 for a model's logits)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def aligned_logits(scorer, params: np.ndarray, rows: np.ndarray, first_row: int = 0) -> np.ndarray:
    """``scorer``'s outputs ``(n, k)`` float32 for standardised float32 rows at positions ``first_row, ...`` of
    their source, computed in :data:`ALIGN_ROWS`-row blocks at multiples of ``ALIGN_ROWS`` (zero rows pad a
    block's ends) on one BLAS thread, so a row's output depends on its position and values alone
    (:meth:`Model.logits_of`; a regression run scores its held-out sets so too)."""
    from nnlib.util.threads import one_blas_thread

    n = len(rows)
    start = first_row - first_row % ALIGN_ROWS
    padded = -(-(first_row + n - start) // ALIGN_ROWS) * ALIGN_ROWS
    block = np.zeros((padded, *rows.shape[1:]), rows.dtype)
    block[first_row - start : first_row - start + n] = rows
    parts = []
    with one_blas_thread():
        for lo in range(0, padded, ALIGN_ROWS):
            logits = scorer.predict_logits(params, block[lo : lo + ALIGN_ROWS])
            parts.append(logits if isinstance(logits, np.ndarray) else logits.numpy())  # torch: a no-graph tensor
    if not parts:
        return np.zeros((0, 0), np.float32)
    return np.ascontiguousarray(np.concatenate(parts)[first_row - start : first_row - start + n])


def regression_sums(spec, z: np.ndarray, raw: np.ndarray, sample_weight, mean, std):
    """The :class:`nnlib.core.metrics.RegressionSums` of outputs ``z`` ``(n, t)`` (training units) against the
    targets ``raw`` in their own units (``(n,)`` or ``(n, t)``), standardised with ``mean``/``std`` (None: as
    they are) for the loss: what a run reports and what :meth:`Model.regression_metrics` recomputes."""
    from nnlib.core import losses, metrics

    raw = np.asarray(raw, np.float64)
    target = raw if mean is None else (raw.reshape(len(raw), -1) - mean) / std
    loss, _ = losses.loss_function("regression", spec.loss, spec.huber_delta)(z, target, sample_weight)
    return metrics.block_sums(True, z, target, loss, sample_weight, mean, std, raw_target=raw)


class Model:
    """A trained network with its preprocessing and classes (what a model file holds).

    Build one with :meth:`load`. A model file written before nnlib kept
    the header (weights only) loads too: :attr:`weights` and :attr:`params`
    work, and every prediction raises a one-line :class:`DataError`.
    """

    def __init__(self, file: ModelFile, backend: str = "numpy"):
        if backend not in ("numpy", "torch"):
            raise ConfigError(f"backend must be 'numpy' or 'torch', got {backend!r}")
        self.file = file
        if file.header is not None and file.header["architecture"]["type"] == "module":
            backend = "torch"  # a user's torch.nn.Module has no numpy twin
        self.backend = backend
        self._params = file.params()
        self._scorer = None

    @classmethod
    def load(cls, path: str | Path, backend: str = "numpy") -> Model:
        """The model in ``path``: a run directory (its ``model.npz``) or a model file.

        Raises :class:`DataError` (one line) for a missing path or a file that is not an nnlib model.
        """
        return cls(model_file.read(path), backend)

    def save(self, path: str | Path) -> Path:
        """Write the model file to ``path`` (atomically; an ``.npz`` without pickle); returns the path."""
        return model_file.write(path, self.file)

    # -- what the model is -------------------------------------------------------------------------------------

    @property
    def header(self) -> dict:
        """The model file's header (architecture, preprocessing, classes); DataError for a weights-only file."""
        return self.file.require_header()

    @property
    def weights(self) -> dict[str, np.ndarray]:
        """The named float32 weight arrays, in flat order (``layer0.weight`` (in x out), ``layer0.bias``, ...)."""
        return self.file.weights

    @property
    def params(self) -> np.ndarray:
        """The weights as one flat float32 vector ``(n_params,)``."""
        return self._params

    @property
    def n_features(self) -> int:
        return int(self.header["n_features"])

    @property
    def n_classes(self) -> int:
        return int(self.header["n_classes"])

    @property
    def classes(self) -> np.ndarray:
        """``(n_classes,)`` int64: the value each output unit stands for (today ``0..n_classes-1``)."""
        return np.asarray(self.header["classes"], np.int64)

    @property
    def is_regressor(self) -> bool:
        """True for a model trained with ``model.task: regression``."""
        return self.header.get("task", "classification") == "regression"

    @property
    def target_names(self) -> list[str]:
        """A regressor's target columns in output order (``[]`` for a classifier)."""
        return list(self.header["targets"]["names"]) if self.is_regressor else []

    def _target_stats(self):
        targets = self.header["targets"]
        if targets["mean"] is None:
            return None, None
        return np.asarray(targets["mean"], np.float64), np.asarray(targets["std"], np.float64)

    def _require_classifier(self, what: str) -> None:
        if self.is_regressor:
            raise ConfigError(
                f"{what}: {self.file.where} is a regressor (model.task=regression, targets "
                f"{self.target_names}); it has no classes or probabilities: use predict"
            )

    @property
    def feature_columns(self) -> list[str] | None:
        """A table source's feature columns in training order, else None (digits, .npz, IDX, a list column)."""
        return self.header["preprocessing"]["feature_columns"]

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        """``(C, H, W)`` of a row when the rows are images, else None."""
        shape = self.header["preprocessing"]["image_shape"]
        return None if shape is None else tuple(shape)

    def _backend(self):
        if self._scorer is None:
            self._scorer = get_backend(self.backend, self.file.spec())
        return self._scorer

    # -- input -------------------------------------------------------------------------------------------------

    def rows(self, x, where: str = "x") -> np.ndarray:
        """``x`` as an ``(n, n_features)`` array (images ``(n, C, H, W)``, or ``(n, H, W)`` for one channel,
        flattened channel-first); DataError naming the shapes allowed and the one given."""
        x = np.asarray(x)
        shape = self.image_shape
        n_features = self.n_features
        if shape is not None and x.ndim == 4 and x.shape[1:] == shape:
            return x.reshape(len(x), -1)
        if shape is not None and x.ndim == 3 and shape[0] == 1 and x.shape[1:] == shape[1:]:
            return x.reshape(len(x), -1)
        if x.ndim == 2 and x.shape[1] == n_features:
            return x
        images = "" if shape is None else f" or images (n, {', '.join(map(str, shape))})"
        raise DataError(f"{where}: features must have shape (n, {n_features}){images}, got {x.shape}")

    def standardize(self, x: np.ndarray, where: str = "x", first_row: int = 0) -> np.ndarray:
        """Checked raw rows ``(n, n_features)`` -> the float32 rows the network takes:
        ``float32((float64(x) - mean) / std)``, or ``float32(x)`` for a model trained without standardising.
        Non-finite or non-numeric values raise DataError naming the sample (numbered from ``first_row``)."""
        x = check_features(x, where, first_row)  # float64
        if self.file.mean is not None:
            x = (x - self.file.mean) / self.file.std
        return x.astype(np.float32)

    def label_indices(self, y, n_rows: int, where: str = "y", first_row: int = 0) -> np.ndarray:
        """The output unit of each label, ``(n,)`` int64; labels that are not integers, or that the model never
        saw (not among :attr:`classes`), raise DataError naming the first one and its sample."""
        y = check_labels(y, n_rows, where, first_row)
        classes = self.classes
        index = np.minimum(np.searchsorted(classes, y), len(classes) - 1)
        unseen = classes[index] != y
        if unseen.any():
            i = int(np.argmax(unseen))
            raise DataError(
                f"{where}: label {y[i]} at sample {first_row + i} is not one of the model's classes "
                f"{classes[0]}..{classes[-1]} (the labels it was trained on)"
            )
        return index

    # -- prediction --------------------------------------------------------------------------------------------

    def logits_of(self, rows: np.ndarray, first_row: int = 0) -> np.ndarray:
        """The network's output ``(n, n_classes)`` float32 for standardised float32 rows (one chunk) that sit at
        positions ``first_row``, ``first_row + 1``, ... of their source.

        A BLAS matrix product gives a row bits that depend on the row's place in the matrix and on the thread
        count, so a reader that cuts the rows otherwise (Spark's partitions and Arrow batches against the local
        path's pieces) would get other last bits. The rows are therefore scored in blocks of
        :data:`ALIGN_ROWS` rows at multiples of ``ALIGN_ROWS`` of the source's positions (zero rows pad a
        block's ends), on one BLAS thread: a row's output depends on its position and values alone."""
        out = aligned_logits(self._backend(), self._params, rows, first_row)
        return out if len(rows) else np.zeros((0, self.n_classes), np.float32)

    def _chunks(self, x, where: str):
        rows = self.rows(x, where)
        for lo in range(0, len(rows), CHUNK_ROWS):
            yield lo, self.logits_of(self.standardize(rows[lo : lo + CHUNK_ROWS], where, lo), lo)

    def predict_logits(self, x) -> np.ndarray:
        """Logits ``(n, n_classes)`` float32 of raw features ``x`` (see :meth:`rows` for the shapes)."""
        self.file.require_header()
        parts = [z for _, z in self._chunks(x, "x")]
        return np.concatenate(parts) if parts else np.zeros((0, self.n_classes), np.float32)

    def predict_proba(self, x) -> np.ndarray:
        """Class probabilities ``(n, n_classes)`` float32, each row summing to 1: the softmax of the logits
        (for ``model.loss: squared`` a normalisation of the outputs rather than a calibrated probability)."""
        self._require_classifier("predict_proba")
        return softmax(self.predict_logits(x))

    def predict(self, x) -> np.ndarray:
        """The class of each row, ``(n,)`` int64: :attr:`classes` at the largest logit; a regressor's
        predictions, float64 ``(n,)`` for one target or ``(n, t)``, in the targets' own units."""
        z = self.predict_logits(x)
        if self.is_regressor:
            return self.destandardize(z)
        return self.classes[z.argmax(axis=1)]

    def destandardize(self, z: np.ndarray) -> np.ndarray:
        """A regressor's outputs ``(n, t)`` to the targets' own units, float64 ``(n,)`` for one target."""
        from nnlib.core.metrics import destandardize

        mean, std = self._target_stats()
        out = np.asarray(z, np.float64) if mean is None else destandardize(z, mean, std)
        return out[:, 0] if out.shape[1] == 1 else out

    def regression_metrics(self, x, y, sample_weight=None):
        """A regressor's :class:`nnlib.core.metrics.RegressionMetrics` (loss in training units; RMSE, MAE,
        R² in the targets' own) on raw features ``x`` and targets ``y`` ``(n,)`` or ``(n, t)``, weighted by
        ``sample_weight`` ``(n,)`` when given: on a run's own test set, its final scores to the bit.
        DataError for an empty set, targets of another count or width, or non-finite targets."""
        from nnlib.core import metrics

        self.file.require_header()
        if not self.is_regressor:
            raise ConfigError(f"regression_metrics: {self.file.where} is a classifier; use evaluate")
        rows = self.rows(x, "x")
        if len(rows) == 0:
            raise DataError("x: holds no samples")
        y = np.asarray(y, np.float64) if np.issubdtype(np.asarray(y).dtype, np.number) else np.asarray(y)
        t = len(self.target_names)
        if (
            not np.issubdtype(y.dtype, np.number)
            or y.shape not in ((len(rows),), (len(rows), t))
            or (y.ndim == 1 and t != 1)
        ):
            raise DataError(
                f"y: targets must be numbers of shape ({len(rows)},) or ({len(rows)}, {t}), got {y.dtype} {y.shape}"
            )
        if not np.isfinite(y).all():
            i = int(np.argmax(~np.isfinite(y.reshape(len(y), -1)).all(axis=1)))
            raise DataError(f"y: targets must be finite, got {y[i]} at sample {i}")
        z = np.concatenate([part for _, part in self._chunks(rows, "x")])
        mean, std = self._target_stats()
        w = None if sample_weight is None else np.asarray(sample_weight, np.float64)
        return metrics.finish_regression(regression_sums(self.file.spec(), z, y, w, mean, std))

    def loss_and_correct(self, logits: np.ndarray, indices: np.ndarray) -> tuple[float, int]:
        """``(summed data loss, correct count)`` of ``logits`` against output units ``indices`` (one chunk)."""
        if len(indices) == 0:
            return 0.0, 0
        loss, _ = LOSSES[self.file.spec().loss](logits, indices)
        return float(loss) * len(indices), int((logits.argmax(axis=1) == indices).sum())

    def evaluate(self, x, y) -> tuple[float, float]:
        """``(mean data loss, accuracy in [0, 1])`` on raw features ``x`` and labels ``y`` ``(n,)``.

        The loss is the model's training loss (``model.loss``) without the L2
        penalty, as the run's ``test_loss``. DataError for an empty set, a
        label count other than ``len(x)``, or a label the model never saw.
        """
        self.file.require_header()
        if self.is_regressor:
            done = self.regression_metrics(x, y)
            return done.loss, done.r2
        rows = self.rows(x, "x")
        if len(rows) == 0:
            raise DataError("x: holds no samples")
        indices = self.label_indices(y, len(rows))
        loss_sum, correct = 0.0, 0
        for lo, z in self._chunks(rows, "x"):
            part_loss, part_correct = self.loss_and_correct(z, indices[lo : lo + len(z)])
            loss_sum, correct = loss_sum + part_loss, correct + part_correct
        return loss_sum / len(rows), correct / len(rows)

    def score(self, x, y) -> float:
        """Accuracy in [0, 1] on raw features ``x`` and labels ``y`` (as :meth:`evaluate`); a regressor's R²."""
        return self.evaluate(x, y)[1]


def load_model(path: str | Path, backend: str = "numpy") -> Model:
    """The :class:`Model` in ``path`` (a run directory or a model file); see :meth:`Model.load`."""
    return Model.load(path, backend)
