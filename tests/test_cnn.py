"""The slides' CNN: its parameter count, numpy against torch and finite differences, and training on digits."""

import numpy as np
import pytest
from conftest import small_config

from nnlib.config import load_config
from nnlib.core.backends import get_backend
from nnlib.core.cnn import ConvSpec
from nnlib.core.mlp import ModelSpec
from nnlib.core.params import init_params, to_named
from nnlib.driver import run
from nnlib.errors import ConfigError, DataError

QUIET = dict(log=lambda _msg: None)


def test_the_slides_cnn_has_28938_parameters_for_28x28():
    spec = ConvSpec((1, 28, 28), (16, 32), 5, 10)
    # conv 5x5x16: 16*25 + 16; conv 5x5x32 over 16 maps: 32*16*25 + 32; linear 32*7*7 -> 10
    assert spec.n_params == (16 * 25 + 16) + (32 * 16 * 25 + 32) + (32 * 7 * 7 * 10 + 10) == 28938
    assert init_params(spec, 0).shape == (28938,)
    assert list(to_named(init_params(spec, 0), spec)) == [
        "conv0.weight",
        "conv0.bias",
        "conv1.weight",
        "conv1.bias",
        "fc.weight",
        "fc.bias",
    ]


# The float32 gradients are held to the float64 one (the oracle), not to each other. nnlib's numpy CNN is
# matrix products of the patch matrix, accurate to float32 rounding on any CPU (measured 1.1e-7 of the largest
# entry). torch chooses its float32 convolution kernels by CPU: 1.1e-7 of the largest entry on one machine,
# 2.6e-5 on another (the 3x3 case below), so torch's float32 result gets the looser bound.
NUMPY_FLOAT32 = 2e-6  # of the largest gradient entry
TORCH_FLOAT32 = 1e-4  # of the largest gradient entry; a wrong term (an L2 or a pooling route) is 1e-2 or more


@pytest.mark.parametrize(
    "loss, l2, activation, kernel", [("cross_entropy", 0.0, "relu", 5), ("squared", 0.3, "tanh", 3)]
)
def test_numpy_gradient_equals_torch_autograd(loss, l2, activation, kernel):
    pytest.importorskip("torch")
    spec = ModelSpec(ConvSpec((2, 9, 7), (4, 6), kernel, 5), activation, loss, l2)  # odd sizes: pools drop edges
    rng = np.random.default_rng(0)
    w = init_params(spec.layers, 1) + rng.normal(0, 0.05, spec.layers.n_params).astype(np.float32)
    x, y = rng.normal(size=(11, 2 * 9 * 7)).astype(np.float32), rng.integers(0, 5, 11)
    numpy_cnn, torch_cnn = get_backend("numpy", spec), get_backend("torch", spec)
    # in float64 the two are the same maths: torch's autograd and nnlib's hand-written backward pass
    loss64, grad64 = torch_cnn.loss_and_grad(w.astype(np.float64), x.astype(np.float64), y)
    loss_np64, grad_np64 = numpy_cnn.loss_and_grad(w.astype(np.float64), x.astype(np.float64), y)
    assert grad64.dtype == grad_np64.dtype == np.float64
    assert loss_np64 == pytest.approx(loss64, rel=1e-12)
    np.testing.assert_allclose(grad_np64, grad64, rtol=0, atol=1e-12 * np.abs(grad64).max())
    # in float32 each is within its bound of the float64 gradient
    for backend, bound in ((numpy_cnn, NUMPY_FLOAT32), (torch_cnn, TORCH_FLOAT32)):
        loss32, grad32 = backend.loss_and_grad(w, x, y)
        assert grad32.dtype == np.float32
        assert loss32 == pytest.approx(loss64, rel=bound)
        np.testing.assert_allclose(grad32, grad64, rtol=0, atol=bound * np.abs(grad64).max())
    predicted = numpy_cnn.predict(w.astype(np.float64), x.astype(np.float64))
    np.testing.assert_array_equal(torch_cnn.predict(w.astype(np.float64), x.astype(np.float64)), predicted)
    np.testing.assert_array_equal(numpy_cnn.predict(w, x), predicted)


def test_max_pool_ties_send_the_gradient_to_the_first_winner_as_torch_does():
    pytest.importorskip("torch")
    spec = ModelSpec(ConvSpec((1, 4, 4), (2,), 3, 3))
    w = init_params(spec.layers, 2)
    w[spec.layers.offsets[1][0] : spec.layers.offsets[1][1]] = 0.5  # positive biases: flat regions tie above 0
    x = np.zeros((3, 16), np.float32)  # a blank image: every window ties
    x[1, 5] = 1.0
    y = np.array([0, 1, 2])
    grad_np = get_backend("numpy", spec).loss_and_grad(w, x, y)[1]
    grad_t = get_backend("torch", spec).loss_and_grad(w, x, y)[1]
    np.testing.assert_allclose(grad_np, grad_t, rtol=0, atol=TORCH_FLOAT32 * np.abs(grad_t).max())


def test_gradient_matches_central_differences_in_float64():
    spec = ModelSpec(ConvSpec((1, 6, 6), (3, 4), 3, 4), "sigmoid", "cross_entropy", 0.1)
    cnn = get_backend("numpy", spec)
    rng = np.random.default_rng(3)
    w = init_params(spec.layers, 0).astype(np.float64)
    x, y = rng.normal(size=(5, 36)), rng.integers(0, 4, 5)
    _, grad = cnn.loss_and_grad(w, x, y)
    eps = 1e-6
    for i in rng.choice(w.size, 25, replace=False):
        e = np.zeros_like(w)
        e[i] = eps
        numeric = (cnn.objective(w + e, x, y) - cnn.objective(w - e, x, y)) / (2 * eps)
        assert grad[i] == pytest.approx(numeric, abs=1e-7)


@pytest.mark.slow  # trains the CNN on digits twice
def test_cnn_on_digits_learns_and_numpy_and_torch_runs_agree():
    config = small_config("model.type=cnn", "mappers=4", "train.rounds=3", "train.local_epochs=2")
    result = run(config, **QUIET)
    assert result.summary["model_type"] == "cnn" and result.summary["n_params"] == 14538  # 8x8: 1290 at the end
    # measured 0.733, 0.819, 0.914 by round (2026-11-29): conftest's small_config run with these settings
    assert result.rounds[-1]["test_accuracy"] > 0.9
    pytest.importorskip("torch")
    with_torch = run(config.model_copy(update={"model": config.model.model_copy(update={"backend": "torch"})}), **QUIET)
    assert np.abs(with_torch.params - result.params).max() < 1e-3


@pytest.mark.slow
def test_cnn_on_digits_with_4_mappers_on_spark_reaches_095(spark):
    from nnlib.engines.spark.engine import SparkStageEngine
    from nnlib.engines.spark.session import SessionSettings

    config = load_config(None, ["model.type=cnn", "engine=spark"])  # the defaults: 4 mappers, 5 rounds
    result = run(config, engine=SparkStageEngine(SessionSettings("local[4]")), **QUIET)
    # measured 0.9638 (2026-11-29) on the local engine, whose weights Spark's equal bit for bit:
    #   nnlib run --set model.type=cnn --set engine=local
    assert result.summary["final_test_accuracy"] >= 0.95
    assert len({row["pid"] for row in result.mapper_rows}) == 4


def test_cnn_needs_an_image_shape_and_one_that_fits(tmp_path):
    with pytest.raises(
        ConfigError,
        match=r"model.type=cnn needs the image shape of data.source synthetic: "
        r"set data.image_shape",
    ):
        run(small_config("model.type=cnn", "data.source=synthetic"), **QUIET)
    with pytest.raises(
        DataError,
        match=r"data.image_shape: \[5, 5\] holds 25 values per sample, "
        r"data.source digits has 64 features",
    ):
        run(small_config("model.type=cnn", "data.image_shape=[5,5]"), **QUIET)
    with pytest.raises(ConfigError, match="combine=ist splits an MLP's hidden units and needs model.type=mlp"):
        small_config("model.type=cnn", "combine=ist")
    with pytest.raises(ConfigError, match=r"model.channels: 4 2x2 max-pools shrink the 8x8 image to nothing"):
        run(small_config("model.type=cnn", "model.channels=[2,2,2,2]"), **QUIET)
    with pytest.raises(ConfigError, match="model.kernel: must be odd"):
        small_config("model.type=cnn", "model.kernel=4")


def test_a_synthetic_source_trains_as_an_image_when_given_its_shape():
    result = run(
        small_config(
            "model.type=cnn",
            "data.source=synthetic",
            "data.n_features=16",
            "data.image_shape=[4,4]",
            "model.channels=[3]",
            "model.kernel=3",
        ),
        **QUIET,
    )
    assert result.summary["image_shape"] == [1, 4, 4] and result.summary["n_params"] == 3 * 9 + 3 + 12 * 3 + 3
