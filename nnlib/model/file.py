"""The model file: everything between raw input and the class, in one ``model.npz`` without pickle.

A run's ``model.npz`` holds

- the weights as named arrays in flat order (``layer0.weight`` (in x out),
  ``layer0.bias``, ...; a CNN: ``conv0.weight`` (out x in x k x k), ...,
  ``fc.weight``, ``fc.bias``; a user's module (``model.type: module``): its
  own ``named_parameters()`` then floating ``named_buffers()`` names, as its
  ``state_dict`` has them), float32, as before the header existed, so a
  reader that takes the arrays by name keeps working;
- ``meta.header``: a 0-d unicode array holding a JSON object (below);
- ``meta.mean``, ``meta.std``: ``(n_features,)`` float64, the standardisation
  statistics of the run's training rows, when the run standardised
  (``data.standardize``).

The header::

    {"format": "nnlib-model", "version": 1,
     "architecture": {"type": "mlp", "layer_sizes": [64, 64, 10],
                      "activation": "relu", "loss": "cross_entropy", "output_scale": 1.0},
                     # a CNN: "type": "cnn", "image_shape": [C, H, W], "channels": [...], "kernel": k
                     # a user's module: "type": "module", "module": "package.module:callable",
                     #   "kwargs": {...}, "input_shape": [C, H, W] or [n_features], "search_path": folder
     "preprocessing": {"standardize": true, "feature_columns": ["a", "b", ...] or null,
                       "features_column": null, "label_column": "label", "key_column": null,
                       "image_shape": [C, H, W] or null},
     "classes": [0, 1, ..., K - 1], "n_features": 64, "n_classes": 10,
     "training": {"source": "digits", "seed": 0, "n_train": 1438}}

A regressor's header (``model.task: regression``; version 2, which an nnlib
that reads version 1 only refuses instead of taking it for a classifier)
adds ``"task": "regression"`` and ``"targets": {"names": [...], "mean":
[...] or null, "std": [...] or null}``: the target columns and the
statistics the run standardised them with (``data.standardize_target``),
as JSON floats, which round-trip float64 exactly. ``classes`` is then
``[]``, ``n_classes`` the number of targets (the output width), and the
architecture records ``huber_delta``.

A module's file records its callable and kwargs, not its code: reading
the file imports the callable (from ``sys.path``, the working directory, or
``search_path``, where the training run found it).

``classes`` are the values a prediction is reported as. Every source today
has integer labels ``0..K-1`` with ``K`` the largest training label plus
one (:mod:`nnlib.data.checks`), so class ``i`` is label ``i``; the list is
kept so that a later mapping of other label values needs no new format.

A ``model.npz`` written before the header existed (weights only) still
reads: :class:`ModelFile` has its weights and ``header`` None, and
prediction is refused in one line (:meth:`ModelFile.require_header`).
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnlib.core.cnn import ConvSpec
from nnlib.core.mlp import ModelSpec
from nnlib.core.module_spec import ModuleSpec, canonical_kwargs
from nnlib.core.params import DTYPE, FILE_KEYS, LayerSpec, Layout, pack, to_named
from nnlib.errors import DataError, first_line
from nnlib.outputs import atomic_write_bytes

FORMAT = "nnlib-model"
VERSION = 2  # the newest header read; a classifier's is still written as version 1
HEADER, MEAN, STD = FILE_KEYS  # the arrays that are not weights


@dataclass(frozen=True)
class ModelFile:
    """The contents of a model file: named weights, the header (None for a weights-only file), the statistics."""

    weights: dict[str, np.ndarray]  # name -> float32 array, in flat order
    header: dict | None
    mean: np.ndarray | None = None  # (n_features,) float64; None: not standardised (or a weights-only file)
    std: np.ndarray | None = None
    path: Path | None = None  # where it was read from, for messages

    @property
    def where(self) -> str:
        return str(self.path) if self.path is not None else "the model"

    def require_header(self, what: str = "predicting") -> dict:
        """The header; a weights-only file is refused in one line naming what is missing."""
        if self.header is None:
            raise DataError(
                f"{self.where} holds weights only (written before nnlib model files kept the "
                f"architecture, the standardisation and the classes); {what} needs them: train the "
                "model again with this nnlib to get a complete model file"
            )
        return self.header

    def spec(self) -> ModelSpec:
        """The network the header describes (an MLP's :class:`LayerSpec` or a CNN's :class:`ConvSpec`)."""
        return spec_from_header(self.require_header())

    def params(self) -> np.ndarray:
        """The weights as the one flat float32 vector ``(n_params,)`` of :mod:`nnlib.core.params`."""
        return pack(list(self.weights.values()))

    def arrays(self) -> dict[str, np.ndarray]:
        """Everything the ``.npz`` holds: the weights, then the header and the statistics."""
        out = dict(self.weights)
        if self.header is not None:
            out[HEADER] = np.array(json.dumps(self.header))
        if self.mean is not None:
            out[MEAN], out[STD] = np.asarray(self.mean, np.float64), np.asarray(self.std, np.float64)
        return out


def spec_from_header(header: dict) -> ModelSpec:
    """The :class:`ModelSpec` of a header's ``architecture`` (the loss is kept, the L2 penalty is not)."""
    arch = header["architecture"]
    layers: Layout
    if arch["type"] == "module":
        layers = ModuleSpec(
            arch["module"],
            canonical_kwargs(arch["kwargs"]),
            tuple(arch["input_shape"]),
            int(header["n_classes"]),
            arch.get("search_path", ""),
        )
    elif arch["type"] == "cnn":
        layers = ConvSpec(
            tuple(arch["image_shape"]), tuple(arch["channels"]), int(arch["kernel"]), int(header["n_classes"])
        )
    else:
        layers = LayerSpec(tuple(arch["layer_sizes"]))
    return ModelSpec(
        layers,
        arch["activation"],
        arch["loss"],
        0.0,
        float(arch.get("output_scale", 1.0)),
        task=header.get("task", "classification"),
        huber_delta=float(arch.get("huber_delta", 1.0)),
    )


def make_header(config, data, spec: ModelSpec) -> dict:
    """The header of a model trained as ``config`` says on ``data`` (a :class:`nnlib.data.dataset.Dataset`)."""
    layers = spec.layers
    if isinstance(layers, ModuleSpec):
        arch = {
            "type": "module",
            "module": layers.module,
            "kwargs": json.loads(layers.kwargs),
            "input_shape": list(layers.input_shape),
            "search_path": layers.search_path,
        }
    elif isinstance(layers, ConvSpec):
        arch = {
            "type": "cnn",
            "image_shape": list(layers.image_shape),
            "channels": list(layers.channels),
            "kernel": layers.kernel,
        }
    else:
        assert isinstance(layers, LayerSpec)  # the three layouts there are
        arch = {"type": "mlp", "layer_sizes": list(layers.sizes)}
    arch.update(activation=spec.activation, loss=spec.loss, output_scale=float(spec.output_scale))
    d = config.data
    regression = {}
    if getattr(data, "regression", False):
        arch["huber_delta"] = float(spec.huber_delta)

        def as_list(a):
            return None if a is None else [float(v) for v in np.asarray(a, np.float64)]

        regression = {
            "task": "regression",
            "targets": {
                "names": list(data.target_names),
                "mean": as_list(data.target_mean),
                "std": as_list(data.target_std),
            },
        }
    return {
        "format": FORMAT,
        "version": 2 if regression else 1,
        "architecture": arch,
        "preprocessing": {
            "standardize": data.mean is not None,
            "feature_columns": None if data.feature_names is None else list(data.feature_names),
            "features_column": d.features_column,
            "label_column": d.label_column,
            "key_column": d.key_column,
            "image_shape": None if data.image_shape is None else list(data.image_shape),
        },
        "classes": [] if regression else list(range(data.n_classes)),
        "n_features": data.n_features,
        "n_classes": data.n_outputs if regression else data.n_classes,
        "training": {"source": d.source, "seed": config.seed, "n_train": data.n_train},
        **regression,
    }


def model_file(config, data, spec: ModelSpec, params: np.ndarray) -> ModelFile:
    """The model file of a finished run: ``params`` (flat float32) of ``spec``, trained as ``config`` says on
    ``data`` (whose ``mean``/``std`` are the standardisation the run applied)."""
    return ModelFile(to_named(params, spec.layers), make_header(config, data, spec), data.mean, data.std)


def write(path: str | Path, model: ModelFile) -> Path:
    """Write ``model`` to ``path`` atomically (a temporary file renamed into place)."""
    buf = io.BytesIO()
    np.savez(buf, **model.arrays())  # type: ignore[arg-type]  # numpy's stubs: **kwds might fill allow_pickle
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())  # a failed write is one OutputError line naming the file
    return path


def model_path(path: str | Path) -> Path:
    """``path`` itself, or ``path/model.npz`` for a run directory; a missing one is one line naming it."""
    path = Path(path)
    if path.is_dir():
        if not (path / "model.npz").is_file():
            raise DataError(
                f"{path}: a directory without model.npz (not a finished run; give a run directory or a model file)"
            )
        return path / "model.npz"
    if not path.exists():
        raise DataError(f"{path}: no such run directory or model file")
    return path


def read(path: str | Path) -> ModelFile:
    """Read a model file (or a run directory's ``model.npz``) with pickle disabled.

    A file that is not an nnlib model (not an ``.npz``; no header and no
    ``layer0.weight``/``conv0.weight``; a header of another format or a newer
    version; weights that do not fit the header) is one :class:`DataError` line.
    """
    path = model_path(path)
    try:
        with open(path, "rb") as fh:
            if fh.read(4) != b"PK\x03\x04":  # an .npz is a zip archive
                raise DataError(f"{path} is not an nnlib model file (not an .npz archive)")
            fh.seek(0)
            with np.load(fh, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path} is not an nnlib model file (not a readable .npz: {first_line(exc)})") from None
    weights = {k: v for k, v in arrays.items() if k not in FILE_KEYS}
    if HEADER not in arrays:
        if not ({"layer0.weight", "conv0.weight"} & set(weights)):
            raise DataError(
                f"{path} is not an nnlib model file (no {HEADER} and no layer0.weight or conv0.weight; "
                f"found {sorted(arrays)[:6]})"
            )
        return ModelFile(weights, None, path=path)
    header = _header(arrays[HEADER], path)
    mean = arrays.get(MEAN)
    std = arrays.get(STD)
    model = ModelFile(weights, header, mean, std, path)
    _check(model, path)
    return model


def _header(raw: np.ndarray, path: Path) -> dict:
    try:
        header = json.loads(str(raw.item()) if raw.ndim == 0 else "")
    except (ValueError, TypeError) as exc:
        raise DataError(f"{path}: {HEADER} is not a JSON object ({first_line(exc)})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        got = header.get("format") if isinstance(header, dict) else type(header).__name__
        raise DataError(f"{path} is not an nnlib model file ({HEADER} says format {got!r}, not {FORMAT!r})")
    if not isinstance(header.get("version"), int) or header["version"] > VERSION:
        raise DataError(
            f"{path}: model file version {header.get('version')!r} is newer than this nnlib reads "
            f"(up to {VERSION}); upgrade nnlib"
        )
    return header


def _check(model: ModelFile, path: Path) -> None:
    """The weights and statistics fit the header's network: names, shapes, dtypes."""
    try:
        layers = model.spec().layers
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: the header's architecture is incomplete ({first_line(exc)})") from None
    expected = dict(zip(layers.names(), layers.shapes(), strict=True))
    got = {k: tuple(v.shape) for k, v in model.weights.items()}
    if list(got) != list(expected) or got != expected:
        raise DataError(f"{path}: the weights do not fit the header's network (expected {expected}, got {got})")
    if any(v.dtype != DTYPE for v in model.weights.values()):
        raise DataError(f"{path}: the weights must be float32")
    assert model.header is not None  # model.spec() above read it
    n_features = model.header["n_features"]
    if model.header["preprocessing"]["standardize"]:
        for name, arr in ((MEAN, model.mean), (STD, model.std)):
            if arr is None or arr.shape != (n_features,):
                raise DataError(
                    f"{path}: {name} must be a ({n_features},) array for a standardised model, "
                    f"got {None if arr is None else arr.shape}"
                )
