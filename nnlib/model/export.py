"""Export a :class:`nnlib.model.model.Model` to ONNX or torch: raw features in, probabilities out.

``nnlib export RUN_DIR --format onnx|torch --out FILE`` calls :func:`export`.

**ONNX** (``pip install 'nnlib[onnx]'``): one graph built with ``onnx.helper``,
opset 17. Input ``features``: float32 ``(batch, n_features)`` raw rows (a
CNN's images flattened channel-first, as the training rows), the batch axis
dynamic. Inside: the run's standardisation in float64 (``(x - mean) / std``,
then float32, as nnlib computes it), the layers (``MatMul``/``Add`` and the
activation; a CNN's ``Conv``, activation, 2x2 ``MaxPool`` blocks, then
``Flatten`` and the linear layer), ``Softmax``. Outputs: ``probabilities``
float32 ``(batch, n_classes)`` and ``prediction`` int64 ``(batch,)`` (the
class). Before the file is written, onnxruntime runs it on rows around the
training mean and its probabilities must equal nnlib's within 1e-5.

**torch**: a file for ``torch.load(path, weights_only=True)`` holding
``{"header": <the model file's JSON header>, "state_dict": ...}``. The module
is rebuilt by :func:`build_torch_module` from the header alone, then the
weights loaded, which is what :func:`load_torch` does::

    from nnlib.model.export import load_torch
    module = load_torch("model.pt")       # torch.nn.Sequential, in eval mode
    probabilities = module(torch.from_numpy(x_raw).float())   # (n, n_classes)

The module is a ``torch.nn.Sequential``: a :class:`Standardize` step (float64
inside, float32 out), ``Linear`` and activation layers (a CNN: ``Unflatten``
to ``(C, H, W)``, then ``Conv2d``, activation, ``MaxPool2d(2)`` blocks,
``Flatten``, ``Linear``), then ``Softmax(dim=1)``. No pickle and no
TorchScript: the state dict holds tensors only.

**A user's module** (``model.type: module``): the torch file's
``state_dict`` is the module's own (its names, ``num_batches_tracked``
included), with ``"standardize"`` (``mean``, ``std``) beside it when the run
standardised; :func:`load_torch` imports the callable the header names and
returns ``Sequential(standardize, Unflatten(1, input_shape), module,
Softmax(dim=1))``. ONNX is ``torch.onnx.export`` of that (the TorchScript
exporter, which needs no onnxscript), checked with onnxruntime as above.

**A regressor** (``model.task: regression``): in place of the softmax, the
targets' de-standardisation ``float64(output) * std + mean`` (the run's
target statistics, from the header; nothing when the run kept the targets
as they were). ONNX: one output ``prediction``, float64 ``(batch,
n_targets)``; torch: the module returns that. The check: within 1e-5 of
nnlib's predictions in standardised units (divided by the target's std).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from nnlib.core.params import unpack
from nnlib.errors import ConfigError, NnlibError
from nnlib.model.model import Model
from nnlib.outputs import atomic_write_bytes

FORMATS = ("onnx", "torch")
OPSET = 17
CHECK_TOLERANCE = 1e-5  # largest difference of a probability from nnlib's that the exported graph may show
_ONNX_ACTIVATIONS = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh"}


def export(model: Model, fmt: str, out: str | Path) -> Path:
    """Write ``model`` as ``fmt`` (``onnx`` or ``torch``) to ``out``, atomically; returns ``out``.

    Raises ConfigError (one line) for another format or when the format's
    packages are not installed (nothing is written then), DataError for a
    weights-only model file, OutputError when ``out`` cannot be written (no
    temporary file is left).
    """
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    model.file.require_header("exporting")
    data = onnx_bytes(model) if fmt == "onnx" else torch_bytes(model)
    out = Path(out)
    atomic_write_bytes(out, data, "--out")  # a failed write is one OutputError line
    return out


def _layers(model: Model) -> list[np.ndarray]:
    """The weight arrays in flat order (views of the flat vector)."""
    return unpack(model.params, model.file.spec().layers)


# -- ONNX ------------------------------------------------------------------------------------------------------


def _require_onnx():
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise ConfigError(
            f"--format onnx needs the onnx and onnxruntime packages ({exc}); "
            "install them with pip install 'nnlib[onnx]'"
        ) from None
    return onnx, onnxruntime


def onnx_graph(model: Model):
    """The model as an ``onnx.ModelProto`` (see the module docstring for its inputs and outputs)."""
    onnx, _ = _require_onnx()
    from onnx import TensorProto, helper, numpy_helper

    spec = model.file.spec()
    arch = model.header["architecture"]
    inits, nodes = [], []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(op: str, inputs: list[str], output: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    h = "features"
    if model.file.mean is not None and model.file.std is not None:
        h = node("Cast", [h], "features_f64", to=TensorProto.DOUBLE)
        h = node("Sub", [h, const("mean", model.file.mean.astype(np.float64))], "centred")
        h = node("Div", [h, const("std", model.file.std.astype(np.float64))], "scaled")
        h = node("Cast", [h], "standardized", to=TensorProto.FLOAT)
    act = _ONNX_ACTIVATIONS[spec.activation]
    arrays = _layers(model)
    if arch["type"] == "cnn":
        c, height, width = arch["image_shape"]
        k = int(arch["kernel"])
        h = node("Reshape", [h, const("image_shape", np.array([-1, c, height, width], np.int64))], "images")
        for i in range(len(arch["channels"])):
            h = node(
                "Conv",
                [h, const(f"conv{i}.weight", arrays[2 * i]), const(f"conv{i}.bias", arrays[2 * i + 1])],
                f"conv{i}",
                kernel_shape=[k, k],
                pads=[k // 2] * 4,
            )
            h = node(act, [h], f"conv{i}_act")
            h = node("MaxPool", [h], f"pool{i}", kernel_shape=[2, 2], strides=[2, 2])
        h = node("Flatten", [h], "flat", axis=1)
        h = node("MatMul", [h, const("fc.weight", arrays[-2])], "fc_product")
        logits = node("Add", [h, const("fc.bias", arrays[-1])], "logits")
    else:
        n_layers = len(arch["layer_sizes"]) - 1
        for i in range(n_layers):
            weight = arrays[2 * i]
            if i == n_layers - 1 and spec.output_scale != 1:
                weight = weight * np.float32(spec.output_scale)  # the scale multiplies h @ W, not the bias
            h = node("MatMul", [h, const(f"layer{i}.weight", weight)], f"layer{i}_product")
            h = node(
                "Add", [h, const(f"layer{i}.bias", arrays[2 * i + 1])], f"layer{i}" if i < n_layers - 1 else "logits"
            )
            if i < n_layers - 1:
                h = node(act, [h], f"layer{i}_act")
        logits = h
    features = [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", model.n_features])]
    if model.is_regressor:
        out = node("Cast", [logits], "outputs_f64", to=TensorProto.DOUBLE)
        mean, std = model._target_stats()
        if mean is None:
            node("Identity", [out], "prediction")
        else:
            out = node("Mul", [out, const("target_std", std)], "scaled_outputs")
            node("Add", [out, const("target_mean", mean)], "prediction")
        graph = helper.make_graph(
            nodes,
            "nnlib_model",
            features,
            [helper.make_tensor_value_info("prediction", TensorProto.DOUBLE, ["batch", model.n_classes])],
            inits,
        )
    else:
        node("Softmax", [logits], "probabilities", axis=1)
        node("ArgMax", [logits], "unit", axis=1, keepdims=0)
        node("Gather", ["classes", "unit"], "prediction", axis=0)
        const("classes", model.classes)
        graph = helper.make_graph(
            nodes,
            "nnlib_model",
            features,
            [
                helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", model.n_classes]),
                helper.make_tensor_value_info("prediction", TensorProto.INT64, ["batch"]),
            ],
            inits,
        )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="nnlib")
    proto.ir_version = min(proto.ir_version, 9)  # readable by onnxruntime releases from 1.17 on
    proto.metadata_props.add(key="nnlib_header", value=json.dumps(model.header))
    onnx.checker.check_model(proto)
    return proto


def check_rows(model: Model, n: int = 64, seed: int = 0) -> np.ndarray:
    """``(n, n_features)`` float32 raw rows around the training mean (what an export is checked on)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, model.n_features))
    if model.file.mean is not None and model.file.std is not None:
        x = model.file.mean + model.file.std * x
    return x.astype(np.float32)


def module_onnx_graph(model: Model):
    """A user's module (``model.type: module``) as an ``onnx.ModelProto``: ``torch.onnx.export`` (the
    TorchScript exporter, opset 17) of :func:`torch_module` with the prediction added; same inputs and outputs."""
    onnx, _ = _require_onnx()
    torch = _require_torch()
    Module: Any = torch.nn.Module  # a base class from the module imported on demand

    class WithPrediction(Module):
        def __init__(self, probabilities, classes):
            super().__init__()
            self.probabilities = probabilities
            self.register_buffer("classes", torch.from_numpy(classes))

        def forward(self, x):
            p = self.probabilities(x)
            return p, self.classes[p.argmax(dim=1)]

    regressor = model.is_regressor
    wrapper = torch_module(model) if regressor else WithPrediction(torch_module(model), model.classes).eval()
    outputs = ["prediction"] if regressor else ["probabilities", "prediction"]
    buf = io.BytesIO()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            wrapper,
            (torch.from_numpy(check_rows(model, 2)),),
            buf,
            dynamo=False,
            input_names=["features"],
            output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in ["features", *outputs]},
            opset_version=OPSET,
        )
    proto = onnx.load_from_string(buf.getvalue())
    proto.metadata_props.add(key="nnlib_header", value=json.dumps(model.header))
    onnx.checker.check_model(proto)
    return proto


def onnx_bytes(model: Model) -> bytes:
    """The ONNX file's bytes, after onnxruntime's probabilities on :func:`check_rows` matched nnlib's."""
    _, ort = _require_onnx()
    module = model.header["architecture"]["type"] == "module"
    data = (module_onnx_graph(model) if module else onnx_graph(model)).SerializeToString()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    x = check_rows(model)
    if model.is_regressor:
        (prediction,) = session.run(None, {"features": x})
        expected = model.predict(x).reshape(len(x), -1)
        _, std = model._target_stats()
        gap = float((np.abs(prediction - expected) / (1.0 if std is None else std)).max())
        if not gap <= CHECK_TOLERANCE:
            raise NnlibError(
                f"export: onnxruntime's predictions differ from nnlib's by {gap:.2e} target standard "
                f"deviations (allowed {CHECK_TOLERANCE:.0e}); nothing written"
            )
        return data
    probabilities, prediction = session.run(None, {"features": x})
    gap = float(np.abs(probabilities - model.predict_proba(x)).max())
    if not gap <= CHECK_TOLERANCE or not np.array_equal(prediction, model.predict(x)):
        raise NnlibError(
            f"export: onnxruntime's probabilities differ from nnlib's by {gap:.2e} "
            f"(allowed {CHECK_TOLERANCE:.0e}); nothing written"
        )
    return data


# -- torch -----------------------------------------------------------------------------------------------------


def _require_torch() -> Any:  # the torch module, imported on demand (an optional dependency)
    try:
        import torch
    except ImportError as exc:
        raise ConfigError(f"--format torch needs PyTorch ({exc}); install it with pip install 'nnlib[torch]'") from None
    return torch


def build_torch_module(header: dict):
    """A ``torch.nn.Sequential`` for a model file's ``header`` (a dict), its weights uninitialised:
    load them with ``load_state_dict`` (the saved state dict's keys are this module's).

    Input: float32 ``(n, n_features)`` raw rows; output: ``(n, n_classes)`` probabilities, or a regressor's
    float64 ``(n, n_targets)`` predictions in the targets' own units.
    """
    torch = _require_torch()
    nn = torch.nn
    Module: Any = nn.Module  # a base class from the module imported on demand

    class Standardize(Module):
        """``float32((float64(x) - mean) / std)``, with ``mean`` and ``std`` float64 buffers."""

        def __init__(self, n_features: int):
            super().__init__()
            self.register_buffer("mean", torch.zeros(n_features, dtype=torch.float64))
            self.register_buffer("std", torch.ones(n_features, dtype=torch.float64))

        def forward(self, x):
            return ((x.double() - self.mean) / self.std).float()

    class Destandardize(Module):
        """A regressor's ``float64(z) * std + mean`` (the header's target statistics, not in the state dict)."""

        def __init__(self, targets: dict):
            super().__init__()
            none = targets["mean"] is None
            self.register_buffer(
                "mean", torch.tensor([0.0] if none else targets["mean"], dtype=torch.float64), persistent=False
            )
            self.register_buffer(
                "std", torch.tensor([1.0] if none else targets["std"], dtype=torch.float64), persistent=False
            )

        def forward(self, z):
            return z.double() * self.std + self.mean

    last = Destandardize(header["targets"]) if header.get("task") == "regression" else nn.Softmax(dim=1)
    arch = header["architecture"]
    if arch["type"] == "module":  # the user's module, rebuilt by importing its callable
        from nnlib.core.module_spec import ModuleSpec
        from nnlib.model.file import spec_from_header

        module = spec_from_header(header).layers
        assert isinstance(module, ModuleSpec)  # architecture type "module"
        net = module.build().eval()
        first = Standardize(header["n_features"]) if header["preprocessing"]["standardize"] else nn.Identity()
        return nn.Sequential(first, nn.Unflatten(1, tuple(arch["input_shape"])), net, last).eval()
    act = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}[arch["activation"]]
    steps = [Standardize(header["n_features"]) if header["preprocessing"]["standardize"] else nn.Identity()]
    if arch["type"] == "cnn":
        c, h, w = arch["image_shape"]
        steps.append(nn.Unflatten(1, (c, h, w)))
        fan_in, k = c, int(arch["kernel"])
        for channels in arch["channels"]:
            steps += [nn.Conv2d(fan_in, channels, k, padding=k // 2), act(), nn.MaxPool2d(2)]
            fan_in, h, w = channels, h // 2, w // 2
        steps += [nn.Flatten(1), nn.Linear(fan_in * h * w, header["n_classes"])]
    else:
        sizes = arch["layer_sizes"]
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            steps.append(nn.Linear(fan_in, fan_out))
            if i < len(sizes) - 2:
                steps.append(act())
    steps.append(last)
    return nn.Sequential(*steps).eval()


def torch_module(model: Model):
    """``model`` as a torch module with its weights loaded (:func:`build_torch_module`)."""
    torch = _require_torch()
    module = build_torch_module(model.header)
    if model.header["architecture"]["type"] == "module":
        if model.file.mean is not None and model.file.std is not None:
            module[0].load_state_dict(
                {
                    "mean": torch.from_numpy(model.file.mean.astype(np.float64)),
                    "std": torch.from_numpy(model.file.std.astype(np.float64)),
                }
            )
        missing, unexpected = module[2].load_state_dict(
            {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in model.weights.items()}, strict=False
        )
        assert not unexpected and all(not module[2].get_buffer(k).is_floating_point() for k in missing)
        return module
    arrays = _layers(model)
    state = {}
    if model.file.mean is not None and model.file.std is not None:
        state["0.mean"] = torch.from_numpy(model.file.mean.astype(np.float64))
        state["0.std"] = torch.from_numpy(model.file.std.astype(np.float64))
    weighted = [(i, m) for i, m in enumerate(module) if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    scale = model.file.spec().output_scale
    for n, (i, layer) in enumerate(weighted):
        weight, bias = arrays[2 * n], arrays[2 * n + 1]
        if isinstance(layer, torch.nn.Linear):
            weight = weight.T * np.float32(scale if n == len(weighted) - 1 else 1.0)  # nnlib keeps (in, out)
        state[f"{i}.weight"] = torch.from_numpy(np.ascontiguousarray(weight))
        state[f"{i}.bias"] = torch.from_numpy(np.ascontiguousarray(bias))
    module.load_state_dict(state)
    return module


def torch_bytes(model: Model) -> bytes:
    """The torch file's bytes: ``{"header": JSON text, "state_dict": tensors}``."""
    torch = _require_torch()
    buf = io.BytesIO()
    module = torch_module(model)
    if model.header["architecture"]["type"] == "module":  # the user's module's own state dict and names
        saved = {"header": json.dumps(model.header), "state_dict": module[2].state_dict()}
        if model.file.mean is not None and model.file.std is not None:
            saved["standardize"] = module[0].state_dict()
    else:
        saved = {"header": json.dumps(model.header), "state_dict": module.state_dict()}
    torch.save(saved, buf)
    return buf.getvalue()


def load_torch(path: str | Path):
    """The module of a torch export (``torch.load`` with ``weights_only=True``), in eval mode."""
    torch = _require_torch()
    saved = torch.load(path, weights_only=True)
    module = build_torch_module(json.loads(saved["header"]))
    if "standardize" in saved:
        module[0].load_state_dict(saved["standardize"])
    (module[2] if json.loads(saved["header"])["architecture"]["type"] == "module" else module).load_state_dict(
        saved["state_dict"]
    )
    return module
