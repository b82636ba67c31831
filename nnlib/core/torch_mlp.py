"""The torch backend: any ``torch.nn.Module`` trained on nnlib's flat parameter vector; the MLP is one.

Imported only when ``model.backend: torch`` is chosen. Parameters come in and
go out as the flat float32 numpy vector (what travels between mappers);
inside, the module's tensors are views of one flat tensor over that vector's
memory, so nothing is copied between numpy and torch.

The contract of :class:`TorchModel` (what a model type supplies, what the
base class does with it):

- A subclass implements ``make_module() -> torch.nn.Module``. The module's
  ``forward(x)`` maps a batch ``x`` ``(batch, n_features)`` (rows as the data
  stores them) to logits ``(batch, n_classes)``. The module's tensors are
  placeholders: their values are never read.
- The flat vector's arrays, in ``spec.layers.offsets`` order (``(start,
  stop, shape)`` each), are exactly the module's ``named_parameters()`` in
  order, followed by its floating-point ``named_buffers()`` in order (e.g.
  BatchNorm's running statistics); shapes must match one for one, else
  ``ValueError`` at construction. Under ``task: regression`` the outputs are
  the predictions, ``(batch, n_targets)``. Integer buffers (``num_batches_tracked``)
  stay the module's own and do not travel.
- The base class binds views of the flat tensor as the module's parameters
  (``torch.nn.Parameter`` over the view) and buffers, and implements
  ``loss_and_grad``, ``evaluate``, ``predict`` and :meth:`TorchModel.train_steps`
  on the module: ``train()`` mode while training, ``eval()`` mode (and no
  graph) when scoring. Buffers change only through the module's own
  forward in training mode; the optimizer steps the parameters alone.
- The loss is ``spec.loss`` of ``spec.task`` (:func:`data_loss`, sample-weighted when weights are given) plus
  ``spec.l2 / 2`` times the squared norm of ``spec.layers.weight_mask()``'s entries (weight arrays).
- :meth:`TorchModel.train_steps` is the fast local loop, ``(params,
  opt_state, optimizer, x, y, batches, lr, start=None, proximal_mu=0.0) ->
  loss sum``: the whole round runs on the bound flat tensor, its gradient in
  one flat tensor, the optimizer in place on both
  (:mod:`nnlib.core.torch_train`). :func:`nnlib.core.train.local_sgd` calls
  it whenever a backend has it.
- Tensors are made from numpy only by :func:`nnlib.core.torch_train.as_tensor`.
- The module is per thread: two threads may score and train with one backend.

The MLP's weights are stored ``(fan_in, fan_out)``, so its module computes
``x @ W + b`` (``torch.addmm``), unlike ``nn.Linear``'s ``(out, in)``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nnlib.core import metrics
from nnlib.core.mlp import ModelSpec
from nnlib.core.torch_train import as_tensor, flat_stepper

ACTIVATIONS = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}


def data_loss(
    name: str,
    z: torch.Tensor,
    y: torch.Tensor,
    sample_weight: torch.Tensor | None = None,
    weight_sum: float | None = None,
    task: str = "classification",
    huber_delta: float = 1.0,
) -> torch.Tensor:
    """The data loss ``name`` of the outputs ``z`` ``(m, k)``, as :mod:`nnlib.core.losses` computes it.

    ``y``: ``(m,)`` int64 classes, or under ``task='regression'`` float
    targets ``(m,)`` or ``(m, k)``. With ``sample_weight`` ``(m,)`` the loss
    is ``sum_i w_i l_i / S``, ``S = weight_sum`` or ``sum_i w_i``; ``None``
    is the unweighted mean, computed as before weights existed. Weights all 1
    give the unweighted gradient bit for bit, and the same loss except for
    ``cross_entropy``, whose unweighted mean torch sums in its own order
    (within float32 rounding).
    """
    if task == "classification":
        if sample_weight is None:
            if name == "cross_entropy":
                return F.cross_entropy(z, y)
            target = F.one_hot(y, z.shape[1]).to(z.dtype)
            return 0.5 * ((z - target) ** 2).sum(dim=1).mean()
        if name == "cross_entropy":
            per_row = F.cross_entropy(z, y, reduction="none")
        else:
            per_row = 0.5 * ((z - F.one_hot(y, z.shape[1]).to(z.dtype)) ** 2).sum(dim=1)
    else:
        target = y.reshape(z.shape[0], -1).to(z.dtype)
        if target.shape[1] != z.shape[1]:  # a silent broadcast otherwise
            raise ValueError(f"the targets have {target.shape[1]} column(s), the network {z.shape[1]} output(s)")
        if name == "squared":
            per_entry = 0.5 * (z - target) ** 2
        elif name == "absolute":
            per_entry = (z - target).abs()
        elif name == "huber":
            per_entry = F.huber_loss(z, target, reduction="none", delta=float(huber_delta))
        else:
            raise ValueError(f"loss for task regression must be one of squared, absolute, huber, got {name!r}")
        per_row = per_entry.sum(dim=1)
        if sample_weight is None:
            return per_row.mean()
    w = sample_weight.to(z.dtype)
    s = w.sum() if weight_sum is None else weight_sum
    if float(s) == 0:
        return (per_row * 0).sum()  # a zero loss whose gradient is zero
    return (per_row * w).sum() / s


class TorchModel:
    """A ``torch.nn.Module`` on the flat parameter vector: loss, gradient, scoring and the fast local loop.

    Subclasses supply :meth:`make_module` (see the module docstring for the
    contract). ``eval_chunk`` (rows per forward pass when scoring, ``None``
    for all at once) bounds a scoring pass's memory.
    """

    eval_chunk: int | None = None

    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self._layout = spec.layers
        self._local = threading.local()
        self._mask_np = self._layout.weight_mask()
        self._module()  # check the contract now

    def make_module(self) -> nn.Module:
        """The network, whose parameters then floating buffers are the flat vector's arrays in order."""
        raise NotImplementedError

    # -- binding the flat tensor ---------------------------------------------------------------

    def _module(self) -> tuple[nn.Module, list, int]:
        """This thread's ``(module, slots, n_trained)``: slots are ``(owner, name, is_parameter)`` in flat order."""
        made = getattr(self._local, "made", None)
        if made is None:
            module = self.make_module()
            slots, shapes = [], []
            for name, p in module.named_parameters():
                owner, _, attr = name.rpartition(".")
                slots.append((module.get_submodule(owner), attr, True))
                shapes.append(tuple(p.shape))
            n_trained = len(slots)
            for name, b in module.named_buffers():
                if b.is_floating_point():
                    owner, _, attr = name.rpartition(".")
                    slots.append((module.get_submodule(owner), attr, False))
                    shapes.append(tuple(b.shape))
            expected = [tuple(shape) for _, _, shape in self._layout.offsets]
            if shapes != expected:
                raise ValueError(
                    f"the module's parameters and floating buffers have shapes {shapes}, the flat layout {expected}"
                )
            trained = self._layout.offsets[n_trained - 1][1] if n_trained else 0
            made = self._local.made = (module, slots, trained)
        return made

    def bind(self, flat: torch.Tensor, grad: torch.Tensor | None = None, requires_grad: bool = True) -> nn.Module:
        """This thread's module with views of ``flat`` ``(n_params,)`` as its parameters and floating buffers.

        With ``grad`` ``(n_params,)``, each parameter's ``.grad`` is the view of
        ``grad`` at the same place, so backward accumulates into ``grad``.
        """
        module, slots, _ = self._module()
        for (owner, attr, is_param), (start, stop, shape) in zip(slots, self._layout.offsets, strict=True):
            view = flat[start:stop].view(shape)
            if is_param:
                p = nn.Parameter(view, requires_grad=requires_grad)
                if grad is not None:
                    p.grad = grad[start:stop].view(shape)
                owner._parameters[attr] = p
            else:
                owner._buffers[attr] = view
        return module

    def _penalty_grad(self, grad: torch.Tensor, w: torch.Tensor) -> None:
        """Add the L2 penalty's gradient ``l2 * mask * w`` to ``grad`` in place."""
        if self.spec.l2:
            mask = as_tensor(self._mask_np).to(device=w.device, dtype=w.dtype)
            grad.addcmul_(w, mask, value=float(self.spec.l2))

    # -- the backend interface -----------------------------------------------------------------

    def loss_and_grad(
        self,
        flat: np.ndarray,
        x: np.ndarray,
        y: np.ndarray,
        update_buffers: bool = False,
        sample_weight: np.ndarray | None = None,
        weight_sum: float | None = None,
    ) -> tuple[float, np.ndarray]:
        """Data loss on ``(x, y)`` and the gradient of loss + L2 penalty, flat ``(n_params,)`` in ``flat``'s dtype.

        ``x`` ``(batch, n_features)`` in ``flat``'s dtype, ``y`` ``(batch,)``
        int64 (float ``(batch,)`` or ``(batch, n_targets)`` under regression);
        ``sample_weight`` ``(batch,)`` and ``weight_sum`` as :func:`data_loss`
        says. The training forward's new buffer values (BatchNorm's running
        statistics) go to a copy, or with ``update_buffers`` to ``flat``'s
        buffer entries (a synchronous round's mapper keeps its own); their
        gradient entries are 0.
        """
        host = as_tensor(flat)
        w = host
        device = self.train_device()
        n_trained = self._module()[2]
        if device is not None:
            w = w.to(device, copy=True)
        elif n_trained < len(flat) and not update_buffers:
            w = w.clone()  # buffers a training forward updates: keep the caller's intact
        grad = torch.zeros_like(w)
        module = self.bind(w, grad).train()
        xt, yt = as_tensor(x), as_tensor(y)
        wt = None if sample_weight is None else as_tensor(np.asarray(sample_weight))
        if device is not None:
            self._place_other_buffers(module, device)
            xt, yt = xt.to(device, copy=True), yt.to(device, copy=True)
            wt = None if wt is None else wt.to(device, copy=True)
        loss = self._data_loss(module(xt), yt, wt, weight_sum)
        loss.backward()
        self._penalty_grad(grad, w.detach())
        if device is not None:
            self._place_other_buffers(module, torch.device("cpu"))
            grad = grad.cpu()
            if update_buffers:
                host[n_trained:].copy_(w[n_trained:].cpu())
        return float(loss.detach()), grad.numpy().astype(flat.dtype, copy=False)

    def predict_logits(self, flat: np.ndarray, x: np.ndarray) -> torch.Tensor:
        """The logits ``(n_samples, n_classes)`` of every sample, in eval mode without a graph."""
        with torch.no_grad():
            module = self.bind(as_tensor(flat), requires_grad=False).eval()
            xt = as_tensor(x)
            if self.eval_chunk is None:
                return module(xt)
            return torch.cat([module(xt[i : i + self.eval_chunk]) for i in range(0, max(len(x), 1), self.eval_chunk)])

    def predict(self, flat: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Predicted class of every sample, ``(n_samples,)`` int64; under regression the outputs,
        ``(n_samples, n_targets)`` in ``flat``'s dtype."""
        if self.spec.regression:
            return self.predict_logits(flat, x).numpy()
        return self.predict_logits(flat, x).argmax(dim=1).numpy()

    def _data_loss(
        self,
        z: torch.Tensor,
        y: torch.Tensor,
        sample_weight: torch.Tensor | None = None,
        weight_sum: float | None = None,
    ) -> torch.Tensor:
        return data_loss(self.spec.loss, z, y, sample_weight, weight_sum, self.spec.task, self.spec.huber_delta)

    def evaluate(
        self, flat: np.ndarray, x: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None
    ) -> tuple[float, float]:
        """Return ``(mean data loss, score)`` on ``(x, y)``, as :meth:`nnlib.core.mlp.NumpyModel.evaluate`: the
        score is the accuracy in ``[0, 1]``, or R² averaged over the targets under regression."""
        z, yt = self.predict_logits(flat, x), as_tensor(y)
        if sample_weight is None and not self.spec.regression:
            return float(data_loss(self.spec.loss, z, yt)), float((z.argmax(dim=1) == yt).double().mean())
        wt = None if sample_weight is None else as_tensor(np.asarray(sample_weight))
        loss = float(self._data_loss(z, yt, wt))
        if self.spec.regression:
            return loss, metrics.finish_regression(metrics.regression_sums(z.numpy(), y, sample_weight)).r2
        return loss, metrics.finish_classification(
            metrics.classification_sums(z.argmax(dim=1).numpy(), y, sample_weight)
        ).accuracy

    def score(
        self,
        flat: np.ndarray,
        x: np.ndarray,
        y: np.ndarray,
        sample_weight: np.ndarray | None = None,
        target_mean=None,
        target_std=None,
        raw_target: np.ndarray | None = None,
    ):
        """The block's metric sums, as :meth:`nnlib.core.mlp.NumpyModel.score`."""
        z = self.predict_logits(flat, x)
        wt = None if sample_weight is None else as_tensor(np.asarray(sample_weight))
        loss = float(self._data_loss(z, as_tensor(y), wt))
        return metrics.block_sums(
            self.spec.regression, z.numpy(), y, loss, sample_weight, target_mean, target_std, raw_target
        )

    def train_steps(
        self,
        params: np.ndarray,
        opt_state: np.ndarray | None,
        optimizer,
        x: np.ndarray,
        y: np.ndarray,
        batches: Sequence[np.ndarray],
        lr: float | Sequence[float],
        start: np.ndarray | None = None,
        proximal_mu: float = 0.0,
        sample_weight: np.ndarray | None = None,
        weight_sums: Sequence[float] | None = None,
        rows: Iterator[tuple] | None = None,
    ) -> float:
        """One local round: a step of ``optimizer`` per index array of ``batches``; returns the loss sum.

        ``params`` ``(n_params,)`` and ``opt_state`` (the optimizer's flat
        state, or ``None``) are updated in place. ``x`` ``(n, n_features)``,
        ``y`` ``(n,)`` int; ``batches`` index rows of them (int64 arrays,
        as :func:`nnlib.core.train.batch_indices` gives). ``lr`` is one rate
        or one per step. ``proximal_mu > 0`` adds FedProx's
        ``mu * (w - start)`` to every gradient (``start`` ``(n_params,)``).
        The returned loss sum is ``sum over steps of data loss * batch size``
        (float64), as the numpy loop sums it. With ``sample_weight`` ``(n,)``
        step ``s``'s loss is ``sum w_i l_i / weight_sums[s]`` (see
        :func:`nnlib.core.train.local_sgd`) and the loss sum is ``sum over
        steps of data loss * weight_sums[s]``. Under regression ``y`` is float
        ``(n,)`` or ``(n, n_targets)``. ``rows`` (a disk shard's, as
        :func:`nnlib.core.train.batch_rows` serves them: ``(x[idx], y[idx],
        sample_weight[idx] or None)`` per batch) gives each step's rows
        instead of indexing ``x``, ``y`` and ``sample_weight``: the same
        tensors, so the same bits.
        """
        lrs = np.broadcast_to(np.asarray(lr, np.float64), (len(batches),)).tolist()  # one per step
        device = self.train_device()
        on = (lambda t: t) if device is None else (lambda t: t.to(device, copy=True))  # noqa: E731
        host_w = as_tensor(params)
        host_state = None if opt_state is None else as_tensor(opt_state)
        w = on(host_w)
        grad = torch.zeros_like(w)
        module = self.bind(w, grad).train()
        if device is not None:
            self._place_other_buffers(module, device)
        n_trained = self._module()[2]
        w_trained, g_trained = w[:n_trained], grad[:n_trained]
        state = None if host_state is None else on(host_state)
        step, finish = flat_stepper(optimizer, w_trained, state, len(params))
        if rows is None:
            xt = on(as_tensor(x if x.dtype == params.dtype else x.astype(params.dtype)))
            yt = on(as_tensor(self._labels(y, params.dtype)))
            sw = None if sample_weight is None else on(as_tensor(np.asarray(sample_weight, params.dtype)))

            def batch(idx):
                it = on(as_tensor(np.asarray(idx, np.int64)))
                return xt.index_select(0, it), yt.index_select(0, it), None if sw is None else sw.index_select(0, it)

            served = (batch(idx) for idx in batches)
        else:  # a disk shard's rows, batch by batch: the tensors index_select would make
            served = (
                (
                    on(as_tensor(xb if xb.dtype == params.dtype else xb.astype(params.dtype))),
                    on(as_tensor(self._labels(yb, params.dtype))),
                    None if wb is None else on(as_tensor(np.asarray(wb, params.dtype))),
                )
                for xb, yb, wb in rows
            )
        mask = on(as_tensor(self._mask_np)[:n_trained].to(w.dtype)) if self.spec.l2 else None
        l2 = float(self.spec.l2)
        if proximal_mu and start is None:
            raise ValueError("proximal_mu > 0 pulls towards the round's starting vector: pass start")
        anchor = None if not proximal_mu or start is None else on(as_tensor(start)[:n_trained])
        mu = float(np.float32(proximal_mu))
        loss_name, task, delta = self.spec.loss, self.spec.task, self.spec.huber_delta
        if sample_weight is not None and weight_sums is None:
            raise ValueError("sample_weight comes with the batches' weight_sums (the loss's denominators)")
        sizes = getattr(batches, "sizes", None)  # a lazy round's (nnlib.core.train.Batches): not iterated here
        scales: list[float] = (
            (list(sizes) if sizes is not None else [len(idx) for idx in batches])
            if sample_weight is None or weight_sums is None
            else [float(s) for s in weight_sums]
        )
        loss_sum = 0.0
        losses = []  # on a device: the step losses stay there until the round ends (no wait on it each step)
        for b, ((xb, yb, wb), rate) in enumerate(zip(served, lrs, strict=True)):
            grad.zero_()
            if wb is None:
                loss = data_loss(loss_name, module(xb), yb, task=task, huber_delta=delta)
            else:
                loss = data_loss(loss_name, module(xb), yb, wb, scales[b], task, delta)
            loss.backward()
            with torch.no_grad():
                if mask is not None:
                    g_trained.addcmul_(w_trained, mask, value=l2)
                if anchor is not None:
                    g_trained.add_(w_trained - anchor, alpha=mu)
                step(g_trained, rate)
            if device is None:
                loss_sum += float(loss.detach()) * scales[b]
            else:
                losses.append(loss.detach())
        finish()
        if device is not None:  # back to the host vector that travels
            host_w.copy_(w.cpu())
            if host_state is not None and state is not None:
                host_state.copy_(state.cpu())
            self._place_other_buffers(module, torch.device("cpu"))
            for loss, scale in zip(torch.stack(losses).cpu().tolist() if losses else [], scales, strict=True):
                loss_sum += loss * scale
        return loss_sum

    def _labels(self, y: np.ndarray, dtype) -> np.ndarray:
        """``y`` as the loss takes it: targets in the weights' dtype under regression, else int64 classes."""
        want = dtype if self.spec.regression else np.int64
        return y if y.dtype == want else y.astype(want)

    def train_device(self) -> torch.device | None:
        """Where :meth:`train_steps` and :meth:`loss_and_grad` compute: None for in place on the host arrays
        (the default); a subclass that trains on a device (``train.device``) returns it, and the weights,
        state and batches are copied there and the results back."""
        return None

    def _place_other_buffers(self, module: nn.Module, device: torch.device) -> None:
        """Move the buffers that are not in the flat vector (integer ones, e.g. ``num_batches_tracked``)."""
        for sub in module.modules():
            for name, buf in list(sub._buffers.items()):
                if buf is not None and not buf.is_floating_point() and buf.device != device:
                    sub._buffers[name] = buf.to(device)


class _Affine(nn.Module):
    """``x @ weight + bias`` with ``weight`` ``(fan_in, fan_out)``; ``scale`` multiplies ``x @ weight`` alone."""

    def __init__(self, fan_in: int, fan_out: int, scale: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(fan_in, fan_out))
        self.bias = nn.Parameter(torch.empty(fan_out))
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale != 1:
            return (x @ self.weight) * self.scale + self.bias
        return torch.addmm(self.bias, x, self.weight)


class MLPModule(nn.Module):
    """The MLP of :mod:`nnlib.core.mlp`: affine layers with the activation between them."""

    def __init__(self, sizes: Sequence[int], activation: str, output_scale: float = 1.0):
        super().__init__()
        n = len(sizes) - 1
        self.layers = nn.ModuleList(
            _Affine(a, b, output_scale if i == n - 1 else 1.0)
            for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True))
        )
        self.act = ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = self.act(layer(x))
        return self.layers[-1](x)


class TorchMLP(TorchModel):
    """The torch backend of an MLP."""

    def make_module(self) -> nn.Module:
        return MLPModule(self.spec.mlp.sizes, self.spec.activation, self.spec.output_scale)
