"""The parameter layout of a user's own ``torch.nn.Module`` (``model.type: module``).

``model.module: "package.module:callable"`` names a class or a factory that,
called with ``model.kwargs``, returns an ``nn.Module`` mapping a float32 batch
``(n, *input_shape)`` (``data.image_shape`` as ``(C, H, W)``, else
``(n_features,)``) to ``(n, n_classes)`` outputs (logits for
``cross_entropy``); under ``model.task: regression`` to ``(n, n_targets)``
predictions (``n_classes`` then holds the number of targets).

The flat float32 vector of :mod:`nnlib.core.params` holds, in order, the
module's ``named_parameters()`` and then its floating-point
``named_buffers()`` (BatchNorm's ``running_mean`` and ``running_var``), each
flattened in C order: what every engine ships, every combine rule averages
and every checkpoint stores. Integer buffers (BatchNorm's
``num_batches_tracked``) are not in the vector: each process keeps its own
module's, and a module that computes with them (BatchNorm with
``momentum=None``, a cumulative average) is refused, since its result would
depend on which process trained which round.

Initial weights are the module's own initialisation under
``torch.manual_seed(seed)`` (so the same ``seed`` gives the same start on
every engine), taken in the order above.

Nothing here imports torch until a module is built, so the numpy-only paths
of nnlib never need it.
"""

from __future__ import annotations

import difflib
import importlib
import json
import os
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from nnlib.core.params import DTYPE, FILE_KEYS, Layout
from nnlib.errors import ConfigError, first_line

KEY = "model.module"


def canonical_kwargs(kwargs: dict | None) -> str:
    """``model.kwargs`` as canonical JSON (sorted keys, no spaces): the form a spec holds and compares."""
    try:
        return json.dumps(kwargs or {}, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"model.kwargs: values must be JSON data (numbers, text, lists, mappings), "
            f"got {kwargs!r} ({first_line(exc)})"
        ) from None


def _with_path(directory: str):
    """Append ``directory`` to ``sys.path`` unless it is there (the last place looked)."""
    if directory and directory not in sys.path:
        sys.path.append(directory)


def import_callable(path: str, search_path: str = ""):
    """The object ``path`` (``"package.module:callable"``) names, and the folder its top package lies in.

    Looks on ``sys.path``, then in the working directory, then in
    ``search_path`` (where the driver found it: this lets a Spark executor,
    an mrjob task or an MPI rank on the same machine import it from any
    working directory). A missing module or attribute is one
    :class:`ConfigError` line naming it and where it was looked for.
    """
    if not isinstance(path, str) or path.count(":") != 1 or not all(path.split(":")):
        raise ConfigError(
            f"{KEY}: expected 'package.module:callable' (e.g. 'examples.models.small_resnet:make'), got {path!r}"
        )
    module_name, attr = path.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not module_name.startswith(exc.name):
            raise ConfigError(f"{KEY}: importing {module_name} failed: {first_line(exc)}") from None
        _with_path(os.getcwd())
        _with_path(search_path)
        importlib.invalidate_caches()
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as again:
            looked = ["sys.path", f"the working directory {os.getcwd()}"] + (
                [search_path] if search_path and search_path != os.getcwd() else []
            )
            raise ConfigError(
                f"{KEY}: cannot import {module_name!r} ({first_line(again)}); looked on "
                f"{', '.join(looked)}: put its folder on PYTHONPATH (on Spark ship it with "
                "submit.sh --py-files)"
            ) from None
        except Exception as again:  # noqa: BLE001 - the user's module failed while importing
            raise ConfigError(
                f"{KEY}: importing {module_name} failed: {type(again).__name__}: {first_line(again)}"
            ) from None
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"{KEY}: importing {module_name} failed: {type(exc).__name__}: {first_line(exc)}") from None
    target = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ConfigError(
                f"{KEY}: module {module_name} ({getattr(module, '__file__', '?')}) has no "
                f"attribute {attr!r}; {_allowed_callables(target, part)}"
            )
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(f"{KEY}: {path} is a {type(target).__name__}, not a class or function")
    where = getattr(module, "__file__", None)
    root = ""
    if where:
        root = str(Path(where).resolve().parents[module_name.count(".") + (Path(where).name == "__init__.py")])
    return target, root


def _allowed_callables(owner, name: str, shown: int = 10) -> str:
    """What ``owner`` (a module or class) offers in place of its missing ``name``: "did you mean" its closest
    public callable, else up to ``shown`` of them (those defined in ``owner`` first)."""
    attributes = {n: getattr(owner, n, None) for n in dir(owner) if not n.startswith("_")}
    public = sorted(n for n, value in attributes.items() if callable(value))
    own = [n for n in public if getattr(getattr(owner, n), "__module__", None) == getattr(owner, "__name__", None)]
    close = difflib.get_close_matches(name, public, n=1)
    if close:
        return f"did you mean {close[0]!r}?"
    names = own + [n for n in public if n not in own]
    if not names:
        return "it has no public class or function"
    more = f", ... ({len(names)} in all)" if len(names) > shown else ""
    return f"its classes and functions: {', '.join(names[:shown])}{more}"


@dataclass(frozen=True)
class ModuleSpec(Layout):
    """A user module's layout: what it is (callable, kwargs, input and output sizes) and its flat vector.

    Hashable and comparable by ``module``, ``kwargs``, ``input_shape`` and
    ``n_classes``; ``search_path`` (where the driver found it) and
    ``device`` (``train.device``) say where to import and compute, not what.
    """

    module: str  # "package.module:callable"
    kwargs: str  # model.kwargs as canonical JSON
    input_shape: tuple[int, ...]  # one sample: (C, H, W) or (n_features,)
    n_classes: int
    search_path: str = field(default="", compare=False)
    device: str = field(default="cpu", compare=False)
    task: str = field(default="classification", compare=False)  # names the outputs in messages only

    def build(self):
        """A new instance of the module (float32), initialised by torch's global generator."""
        import torch

        factory, _ = import_callable(self.module, self.search_path)
        try:
            module = factory(**json.loads(self.kwargs))
        except Exception as exc:  # noqa: BLE001 - the user's code: one line naming it
            raise ConfigError(
                f"{KEY}: {self.module}(**{self.kwargs}) failed: {type(exc).__name__}: {first_line(exc)}"
            ) from None
        if not isinstance(module, torch.nn.Module):
            raise ConfigError(f"{KEY}: {self.module} returned a {type(module).__name__}, not a torch.nn.Module")
        return module.float()

    @cached_property
    def _arrays(self) -> tuple[tuple[str, tuple[int, ...], bool], ...]:
        """``(name, shape, is_parameter)`` of every array in flat order, from one instance built aside."""
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            module = self.build()
        check_module(self, module)
        return tuple(
            [(n, tuple(p.shape), True) for n, p in module.named_parameters()]
            + [(n, tuple(b.shape), False) for n, b in module.named_buffers() if b.is_floating_point()]
        )

    def shapes(self) -> list[tuple[int, ...]]:
        return [shape for _, shape, _ in self._arrays]

    def names(self) -> list[str]:
        """The module's own names: its parameters', then its floating-point buffers'."""
        return [name for name, _, _ in self._arrays]

    @property
    def n_weights(self) -> int:
        """Values that training's gradient moves: the parameters (the buffers follow them)."""
        return sum(int(np.prod(s)) for _, s, p in self._arrays if p)

    def fans(self) -> list[None]:
        return [None] * len(self._arrays)

    def weight_mask(self) -> np.ndarray:
        """1 on parameter arrays of 2 dimensions and up (the L2 penalty's support), 0 on biases and buffers."""
        return np.concatenate(
            [
                np.full(int(np.prod(s)), 1.0 if is_param and len(s) >= 2 else 0.0, DTYPE)
                for _, s, is_param in self._arrays
            ]
        )

    def initial_params(self, seed: int) -> np.ndarray:
        """The module's own initialisation under ``torch.manual_seed(seed)``, flat float32 ``(n_params,)``."""
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = self.build()
        return flatten_module(module)

    def describe(self) -> dict:
        return {
            "model_type": "module",
            "module": self.module,
            "kwargs": json.loads(self.kwargs),
            "input_shape": list(self.input_shape),
            "n_classes": self.n_classes,
            "n_params": self.n_params,
            "n_buffer_values": self.n_params - self.n_weights,
        }


def flatten_module(module) -> np.ndarray:
    """A module's parameters then floating-point buffers as one flat float32 vector (host memory)."""
    arrays = [p.detach() for _, p in module.named_parameters()]
    arrays += [b.detach() for _, b in module.named_buffers() if b.is_floating_point()]
    if not arrays:
        return np.zeros(0, DTYPE)
    return np.concatenate([a.cpu().float().reshape(-1).numpy() for a in arrays]).astype(DTYPE, copy=False)


def check_module(spec: ModuleSpec, module) -> None:
    """One line for a module nnlib cannot train: no parameters, BatchNorm's cumulative average (integer state
    in the computation), or outputs that are not ``(n, n_classes)`` for an ``(n, *input_shape)`` batch."""
    import torch

    if not any(True for _ in module.parameters()):
        raise ConfigError(f"{KEY}: {spec.module} has no parameters to train")
    taken = [n for n, _ in [*module.named_parameters(), *module.named_buffers()] if n in FILE_KEYS]
    if taken:
        raise ConfigError(
            f"{KEY}: {spec.module} has an array named {taken[0]!r}, a name the model file keeps for "
            f"itself ({', '.join(FILE_KEYS)}); rename that parameter, buffer or submodule"
        )
    for name, sub in module.named_modules():
        if isinstance(sub, torch.nn.modules.batchnorm._BatchNorm) and sub.momentum is None:
            raise ConfigError(
                f"{KEY}: {spec.module}: BatchNorm {name or '(root)'} has momentum=None (a cumulative "
                "average over num_batches_tracked, an integer buffer nnlib does not combine); give "
                "it a momentum such as 0.1"
            )
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(torch.zeros((2, *spec.input_shape)))
    except Exception as exc:  # noqa: BLE001 - the user's forward pass: one line naming it
        raise ConfigError(
            f"{KEY}: {spec.module} fails on a (2, {', '.join(map(str, spec.input_shape))}) float32 "
            f"batch (data.image_shape, else (n, n_features)): {type(exc).__name__}: "
            f"{first_line(exc)}"
        ) from None
    finally:
        module.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, spec.n_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        each = "target" if spec.task == "regression" else "class"
        raise ConfigError(
            f"{KEY}: {spec.module} must map a (2, {', '.join(map(str, spec.input_shape))}) batch to "
            f"(2, {spec.n_classes}) outputs (one per {each}), got {got}"
        )


def module_spec(
    module: str, kwargs: dict | None, input_shape, n_classes: int, device: str = "cpu", task: str = "classification"
) -> ModuleSpec:
    """The checked :class:`ModuleSpec` of ``model.module`` with ``model.kwargs`` (imports and builds it once);
    ``n_classes`` is the output width: the classes, or under ``task='regression'`` the targets."""
    _, root = import_callable(module)
    spec = ModuleSpec(
        module, canonical_kwargs(kwargs), tuple(int(s) for s in input_shape), int(n_classes), root, device, task
    )
    spec.shapes()  # builds and checks it: every error is raised here, on the driver
    return spec
