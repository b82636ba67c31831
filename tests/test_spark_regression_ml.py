"""nnlib.spark's NNRegressor and NNRegressionModel, and the weightCol and validationIndicatorCol of both
estimators, on a real SparkSession and a Spark Connect one.

The oracles:

* the model's own ``predict`` on the collected features gives ``transform``'s
  ``prediction`` to the bit (a double, or an ML Vector for several targets);
* ``nnlib run`` on the local engine, on the same rows as a CSV file, trains the same
  weights, bit for bit;
* MLlib's evaluators (``RegressionEvaluator``, ``MulticlassClassificationEvaluator``,
  their ``weightCol`` included) on the run's own test rows give the run's final
  metrics (to float32 rounding of the predictions: :data:`FLOAT32`; a weighted R²
  is scikit-learn's in nnlib, Spark's in the evaluator, each checked): the test rows
  are known without the run, as every reader draws them (a seeded permutation of
  the rows' positions; a one-partition DataFrame's position is the row's index);
* a row of weight 2 trains as the row taken twice (one mapper, one round, one local
  epoch, one full batch: the same gradient, summed in another order);
* a validation column marking the rows that ``data.validation_fraction`` would draw
  gives the same run;
* ``CrossValidator``'s ``avgMetrics`` and ``TrainValidationSplit``'s
  ``validationMetrics``: the best model is the grid point with the lowest RMSE;
* the classic session: the same pipeline on Connect fits the same weights.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import on
from test_regression import friedman1

from nnlib.data.dataset import _split
from nnlib.errors import ConfigError, DataError

pytestmark = pytest.mark.slow  # a SparkSession and a Spark Connect server

N = 400
FEATURES = [f"f{j}" for j in range(10)]
PARAMS = dict(mappers=2, hidden=[32], rounds=6, localEpochs=1, lr=0.05, batchSize=16, seed=3)
# the model computes in float32, and float32 products over a batch of other rows (transform's batches, not the
# run's test set) may round a prediction's last bit otherwise: metrics from transform agree to this
FLOAT32 = 1e-6


def _xy(n: int = N, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Friedman's first function, the features float32 values (the estimator trains on float32 features, a
    CSV's are read as float64: values both read alike keep the runs comparable bit for bit)."""
    x, y = friedman1(n, seed)
    return x.astype(np.float32).astype(np.float64), y


def _friedman(session, n: int = N, seed: int = 0, **columns):
    """Friedman's first function (noise 1) as a DataFrame of one partition, rows in order (the row plan's
    position of a row is its index ``i``): ``i``, ``f0``..``f9``, ``label`` (double), ``features`` (an
    ML Vector of f0..f9) and ``columns`` (name -> a sequence of n values, or a pyspark type string and the
    values)."""
    from pyspark.ml.feature import VectorAssembler

    x, y = _xy(n, seed)
    extra = {name: (values if isinstance(values, tuple) else ("double", values)) for name, values in columns.items()}
    schema = ", ".join(
        [
            "i long",
            *(f"{f} double" for f in FEATURES),
            "label double",
            *(f"{name} {kind}" for name, (kind, _) in extra.items()),
        ]
    )
    rows = [(i, *map(float, x[i]), float(y[i]), *(_py(values[i]) for _, values in extra.values())) for i in range(n)]
    df = session.createDataFrame(rows, schema).coalesce(1)
    return VectorAssembler(inputCols=FEATURES, outputCol="features").transform(df)


def _py(value):
    if isinstance(value, np.ndarray):
        return [float(v) for v in value]
    return value.item() if hasattr(value, "item") else value


def _test_rows(n: int = N, seed: int = PARAMS["seed"], fraction: float = 0.2) -> list[int]:
    """The rows the run holds out for testing (``data.test_fraction``), as every reader draws them."""
    return [int(i) for i in _split(n, fraction, seed)[1]]


def _features_and_predictions(out) -> tuple[np.ndarray, np.ndarray]:
    rows = out.orderBy("i").select("features", "prediction").collect()
    x = np.array([r.features.toArray() for r in rows])
    p = np.array([r.prediction.toArray() if hasattr(r.prediction, "toArray") else r.prediction for r in rows])
    return x, p


@pytest.mark.parametrize("targets", [["label"], ["label", "second"]])
def test_a_model_of_nnlib_run_transforms_to_its_own_predictions(spark, tmp_path, targets):
    """A regressor trained by ``nnlib run`` (the local engine, a CSV source), wrapped: a double for one target,
    an ML Vector for two; an empty predictionCol adds nothing."""
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql.types import DoubleType
    from test_regression import REG, write_csv

    from nnlib.api import train
    from nnlib.engines.spark.predict import model_bytes
    from nnlib.model.model import load_model
    from nnlib.spark import NNRegressionModel

    x, y = friedman1(N)
    src = write_csv(
        tmp_path / "f.csv",
        {**{f: x[:, j] for j, f in enumerate(FEATURES)}, "label": y, "second": -2 * y + 100 * x[:, 5]},
    )
    keys = (
        {"data.label_columns": targets}
        if len(targets) > 1
        else {"data.label_column": "label", "data.drop_columns": ["second"]}
    )
    train(overrides={**REG, **keys, "data.source": src, "train.rounds": 2}, out=tmp_path / "run")
    model = NNRegressionModel(model_bytes(load_model(tmp_path / "run")))
    assert model.numTargets == len(targets) and model.targetNames == targets
    with on("classic"):
        df = _friedman(spark)
        out = model.transform(df)
        kind = out.schema["prediction"].dataType
        assert isinstance(kind, VectorUDT if len(targets) > 1 else DoubleType)
        features, p = _features_and_predictions(out)
        assert np.array_equal(p, load_model(tmp_path / "run").predict(features))
        assert p.shape == ((N, 2) if len(targets) > 1 else (N,))
        assert model.copy().setPredictionCol("").transform(df).columns == df.columns


@pytest.fixture(scope="module")
def regression_fit(spark):
    """``Pipeline([NNRegressor])`` fitted on the classic session; its input and transform."""
    from pyspark.ml import Pipeline

    from nnlib.spark import NNRegressor

    with on("classic"):
        df = _friedman(spark)
        fitted = Pipeline(stages=[NNRegressor(conf={"train.momentum": 0.5}, **PARAMS)]).fit(df)
        return df, fitted, fitted.transform(df).cache()


def test_a_regression_pipeline_trains_nnlib_runs_weights_and_saves_and_loads(regression_fit, tmp_path):
    from pyspark.ml import PipelineModel
    from pyspark.sql.types import DoubleType
    from test_regression import write_csv

    from nnlib.api import train
    from nnlib.spark import NNRegressionModel

    df, fitted, out = regression_fit
    nn = fitted.stages[-1]
    assert isinstance(nn, NNRegressionModel) and nn.numFeatures == 10 and nn.targetNames == ["label"]
    # nnlib run on the same rows, as a CSV file read on the local engine: the same weights
    x, y = _xy()
    csv = write_csv(tmp_path / "f.csv", {**{f: x[:, j] for j, f in enumerate(FEATURES)}, "label": y})
    same = {
        "engine": "local",
        "model.task": "regression",
        "data.source": csv,
        "mappers": 2,
        "model.hidden": [32],
        "train.rounds": 6,
        "train.local_epochs": 1,
        "train.lr": 0.05,
        "train.batch_size": 16,
        "seed": 3,
        "train.momentum": 0.5,
    }
    expected = train(overrides=same, write=False)
    assert np.array_equal(nn.model.params, expected.model.params)
    assert nn.summary.summary["final_test_rmse"] == expected.summary["final_test_rmse"]
    assert isinstance(out.schema["prediction"].dataType, DoubleType)
    assert out.columns == [*df.columns, "prediction"]
    x, p = _features_and_predictions(out)
    assert len(p) == N and np.array_equal(p, nn.model.predict(x))  # the model file's values, in the label's units
    assert nn.summary.summary["task"] == "regression" and nn.summary.summary["final_test_r2"] > 0.5
    fitted.write().overwrite().save(str(tmp_path / "pipeline"))
    loaded = PipelineModel.load(str(tmp_path / "pipeline"))
    back = loaded.stages[-1]
    assert isinstance(back, NNRegressionModel) and back.getConf() == {"train.momentum": 0.5}
    assert back.getHidden() == [32] and back.getSeed() == 3 and back.summary.rounds == nn.summary.rounds
    assert np.array_equal(_features_and_predictions(loaded.transform(df))[1], p)


def test_the_evaluator_on_the_runs_test_rows_gives_its_final_metrics(regression_fit):
    from pyspark.ml.evaluation import RegressionEvaluator
    from pyspark.sql import functions as F

    _, fitted, out = regression_fit
    summary = fitted.stages[-1].summary.summary
    test = out.where(F.col("i").isin(_test_rows()))
    assert test.count() == summary["n_test"]
    for metric in ("rmse", "mae", "r2"):
        value = RegressionEvaluator(metricName=metric).evaluate(test)
        assert value == pytest.approx(summary[f"final_test_{metric}"], rel=FLOAT32), metric
    whole = RegressionEvaluator(metricName="rmse").evaluate(out)
    assert whole != pytest.approx(summary["final_test_rmse"], rel=1e-6)  # other rows give another RMSE


def _tuning(session, tuner_cls, **kwargs):
    from pyspark.ml.evaluation import RegressionEvaluator
    from pyspark.ml.tuning import ParamGridBuilder

    from nnlib.spark import NNRegressor

    nn = NNRegressor(**{**PARAMS, "rounds": 3, "hidden": [16]}, weightCol="w")
    # a learning rate too small to move far from the start, and the one that learns
    grid = ParamGridBuilder().addGrid(nn.lr, [1e-4, 0.05]).addGrid(nn.conf, [{"train.momentum": 0.5}]).build()
    tuner = tuner_cls(
        estimator=nn, estimatorParamMaps=grid, evaluator=RegressionEvaluator(), seed=1, parallelism=2, **kwargs
    )
    df = _friedman(session, w=np.ones(N))
    return grid, nn, df, tuner.fit(df)


# CrossValidator and TrainValidationSplit both hand the estimator's fitMultiple a sample of the DataFrame and
# the grid; each runs on one kind of session here, and test_spark_connect_ml.py's classifier runs each on the
# other kind: every tuner meets both kinds of session and both estimators, at half the fits
@pytest.mark.parametrize(
    "kind, tuner", [("classic", "CrossValidator"), ("connect", "TrainValidationSplit")], ids=["classic", "connect"]
)
def test_cross_validation_and_train_validation_split_pick_the_lowest_rmse(kind, tuner, request):
    from pyspark.ml import tuning
    from pyspark.ml.evaluation import RegressionEvaluator

    from nnlib.spark import NNRegressionModel

    session = request.getfixturevalue("spark" if kind == "classic" else "connect")  # its start sets the switch
    with on(kind):
        if tuner == "CrossValidator":
            grid, nn, df, cv = _tuning(session, tuning.CrossValidator, numFolds=2)
            metrics, best = cv.avgMetrics, cv.bestModel
        else:
            grid, nn, df, tvs = _tuning(session, tuning.TrainValidationSplit, trainRatio=0.75)
            metrics, best = tvs.validationMetrics, tvs.bestModel
        assert len(metrics) == 2 and metrics[1] < metrics[0], metrics  # lr 0.05 learns, 1e-4 hardly moves
        lowest = grid[int(np.argmin(metrics))]
        assert isinstance(best, NNRegressionModel) and best.getLr() == lowest[nn.lr] == 0.05
        # the params as Spark ML copied them: the grid's, and the estimator's own
        assert best.getConf() == {"train.momentum": 0.5} and best.getWeightCol() == "w"
        assert best.getHidden() == [16] and best.getRounds() == 3
        out = best.transform(df)
        x, p = _features_and_predictions(out)
        y = np.array([r.label for r in df.orderBy("i").select("label").collect()])
        rmse = RegressionEvaluator().evaluate(out)
        assert rmse == pytest.approx(np.sqrt(np.mean((p - y) ** 2)), rel=1e-12)
        assert rmse < float(np.std(y))  # better than the mean


def test_several_targets_predict_an_ml_vector(spark):
    from pyspark.ml.linalg import VectorUDT

    from nnlib.spark import NNRegressor

    x, y = friedman1(N)
    second = -2 * y + 100 * x[:, 5]
    with on("classic"):
        df = _friedman(spark, targets=("array<double>", np.stack([y, second], axis=1)))
        model = NNRegressor(labelCol="targets", **PARAMS).fit(df)
        out = model.transform(df)
        assert isinstance(out.schema["prediction"].dataType, VectorUDT)
        features, p = _features_and_predictions(out)
    assert model.numTargets == 2 and model.targetNames == ["targets_0", "targets_1"]
    assert p.shape == (N, 2) and np.array_equal(p, model.model.predict(features))
    assert model.summary.summary["final_test_r2"] > 0.5


@pytest.mark.parametrize("estimator", ["NNRegressor", "NNClassifier"])
def test_a_row_of_weight_2_trains_as_the_row_taken_twice(spark, estimator):
    """One mapper, one round, one local epoch, one full batch: row 7 weighing 2 among 80 rows, against the 81
    rows with row 7 twice, placed so that both runs hold out the same 16 test rows."""
    import nnlib.spark

    n, seed, row = 80, 3, 7
    train_a, test_a = _split(n, 0.2, seed)
    train_b, test_b = _split(n + 1, 0.2, seed)
    assert row in train_a and len(test_a) == len(test_b)
    twice = np.empty(n + 1, np.int64)  # the row of the 81 at each position: the same test rows, row 7 twice
    twice[test_b] = test_a
    twice[train_b] = np.append(train_a, row)
    x, y = friedman1(n)
    label = y if estimator == "NNRegressor" else (y > np.median(y)).astype(np.float64)
    cls = getattr(nnlib.spark, estimator)
    unscaled = {"data.standardize": False, **({"data.standardize_target": False} if estimator == "NNRegressor" else {})}
    nn = cls(
        mappers=1, rounds=1, localEpochs=1, batchSize=n + 1, hidden=[8], lr=0.1, seed=seed, weightCol="w", conf=unscaled
    )

    def fit(rows, weights):
        frame = spark.createDataFrame(
            [([float(v) for v in x[i]], float(label[i]), float(w)) for i, w in zip(rows, weights, strict=True)],
            "features array<double>, label double, w double",
        ).coalesce(1)
        return nn.fit(frame)

    with on("classic"):
        weighted = fit(np.arange(n), np.where(np.arange(n) == row, 2.0, 1.0))
        taken_twice = fit(twice, np.ones(n + 1))
        once = fit(np.arange(n), np.ones(n))
    np.testing.assert_allclose(weighted.model.params, taken_twice.model.params, rtol=1e-5, atol=1e-7)
    assert np.abs(weighted.model.params - once.model.params).max() > 1e-4  # the weight changes the step
    assert weighted.summary.summary["n_test"] == taken_twice.summary.summary["n_test"] == len(test_a)


def test_weighted_metrics_are_the_evaluators_with_its_weightcol(spark):
    from pyspark.ml.evaluation import MulticlassClassificationEvaluator, RegressionEvaluator
    from pyspark.sql import functions as F

    from nnlib.spark import NNClassifier, NNRegressor

    w = np.where(np.arange(N) % 3 == 0, 3.0, 0.5)
    _, labels = friedman1(N)
    with on("classic"):
        df = _friedman(spark, w=w, cls=(labels > np.median(labels)).astype(np.float64))
        test = F.col("i").isin(_test_rows())
        regressor = NNRegressor(weightCol="w", combine="weighted", **PARAMS).fit(df)
        out = regressor.transform(df).where(test)
        s = regressor.summary.summary
        for metric in ("rmse", "mae"):
            weighted = RegressionEvaluator(metricName=metric, weightCol="w").evaluate(out)
            assert weighted == pytest.approx(s[f"final_test_{metric}"], rel=FLOAT32), metric
        # R² with weights other than 1: nnlib reports scikit-learn's (r2_score's sample_weight); Spark's takes the
        # summarizer's reliability-weighted variance (nnlib.core.metrics), which the model computes too
        x, y = _xy()
        rows = _test_rows()
        done = regressor.model.regression_metrics(x[rows], y[rows], w[rows])
        assert done.r2 == pytest.approx(s["final_test_r2"], rel=1e-12)
        spark_r2 = RegressionEvaluator(metricName="r2", weightCol="w").evaluate(out)
        assert spark_r2 == pytest.approx(done.r2_spark, rel=FLOAT32) and abs(spark_r2 - done.r2) > 1e-4
        assert RegressionEvaluator().evaluate(out) != pytest.approx(s["final_test_rmse"], rel=1e-6)

        classifier = NNClassifier(labelCol="cls", weightCol="w", **{**PARAMS, "hidden": [8]}).fit(df)
        out = classifier.transform(df).where(test)
        accuracy = MulticlassClassificationEvaluator(labelCol="cls", metricName="accuracy", weightCol="w")
        s = classifier.summary.summary
        assert accuracy.evaluate(out) == pytest.approx(s["final_test_accuracy"], rel=1e-12)
        assert 0.6 < s["final_test_accuracy"] < 1


@pytest.mark.parametrize("estimator", ["NNRegressor", "NNClassifier"])
def test_a_validation_column_marking_the_fractions_rows_gives_the_same_run(spark, estimator, tmp_path):
    """validationIndicatorCol marking the training rows that data.validation_fraction draws: the run of
    ``nnlib run`` (local engine, the same rows as a CSV file) with that fraction, bit for bit, and train.patience
    watches the same validation scores."""
    from test_regression import write_csv

    import nnlib.spark
    from nnlib.api import train

    seed, fraction = PARAMS["seed"], 0.25
    train_rows, _ = _split(N, 0.2, seed)
    _, held = _split(len(train_rows), fraction, seed, 0x7A11)  # the training rows data.validation_fraction draws
    flags = np.zeros(N, bool)
    flags[train_rows[held]] = True
    x, y = _xy()
    classes = (y > np.median(y)).astype(np.int64)
    cls = getattr(nnlib.spark, estimator)
    regression = estimator == "NNRegressor"
    params = dict(PARAMS) if regression else {**PARAMS, "labelCol": "cls"}
    patience = {"train.patience": 2, "train.rounds": 8}
    with on("classic"):
        df = _friedman(spark, v=("boolean", flags), cls=classes.astype(np.float64))
        model = cls(validationIndicatorCol="v", conf={"train.patience": 2}, **{**params, "rounds": 8}).fit(df)
    csv = write_csv(
        tmp_path / "f.csv",
        {**{f: x[:, j] for j, f in enumerate(FEATURES)}, **({"label": y} if regression else {"cls": classes})},
    )
    same = {
        "engine": "local",
        "data.source": csv,
        "mappers": 2,
        "model.hidden": [32],
        "train.local_epochs": 1,
        "train.lr": 0.05,
        "train.batch_size": 16,
        "seed": seed,
        "data.validation_fraction": fraction,
        **patience,
        **({"model.task": "regression"} if regression else {"data.label_column": "cls"}),
    }
    expected = train(overrides=same, write=False)
    assert np.array_equal(model.model.params, expected.model.params)

    def timeless(rounds):
        return [{k: v for k, v in r.items() if "seconds" not in k} for r in rounds]

    assert timeless(model.summary.rounds) == timeless(expected.rounds)
    assert any(k.startswith("val_") for k in model.summary.rounds[0])  # scored on the validation rows
    assert model.summary.summary["n_val"] == int(flags.sum()) > 0
    assert model.getValidationIndicatorCol() == "v"


def test_on_connect_a_regressor_fits_the_classic_weights_and_saves_for_classic(
    spark, connect, regression_fit, tmp_path
):
    from pyspark.ml import Pipeline, PipelineModel

    from nnlib.spark import NNRegressor

    _, classic, classic_out = regression_fit
    expected = _features_and_predictions(classic_out)[1]
    with on("connect"):
        df = _friedman(connect)
        fitted = Pipeline(stages=[NNRegressor(conf={"train.momentum": 0.5}, **PARAMS)]).fit(df)
        assert np.array_equal(fitted.stages[-1].model.params, classic.stages[-1].model.params)
        assert np.array_equal(_features_and_predictions(fitted.transform(df))[1], expected)
        fitted.write().overwrite().save(str(tmp_path / "pipeline"))
    with on("classic"):
        loaded = PipelineModel.load(str(tmp_path / "pipeline"))
        assert np.array_equal(_features_and_predictions(loaded.transform(_friedman(spark)))[1], expected)


def test_bad_columns_and_models_are_one_line(spark, regression_fit, tmp_path):
    from nnlib.spark import NNClassificationModel, NNClassifier, NNRegressionModel, NNRegressor

    _, fitted, _ = regression_fit
    with on("classic"):
        df = _friedman(spark, name=("string", ["r"] * N), flag=("int", [1] * N), w=np.ones(N))
        cases = [
            (NNRegressor(labelCol="name"), "labelCol"),
            (NNRegressor(weightCol="name"), "weightCol"),
            (NNClassifier(weightCol="missing"), "weightCol"),
            (NNRegressor(validationIndicatorCol="flag"), "validationIndicatorCol"),
            (NNClassifier(validationIndicatorCol="flag"), "validationIndicatorCol"),
        ]
        for estimator, param in cases:
            with pytest.raises(DataError) as caught:
                estimator.fit(df)
            message = str(caught.value)
            assert message.startswith(param) and "\n" not in message, message
        # each estimator says what its label column must hold: a regressor's targets, a classifier's classes
        with pytest.raises(DataError, match="^labelCol: column 'name' must hold regression targets: numbers"):
            NNRegressor(labelCol="name").fit(df)
        with pytest.raises(DataError, match="^labelCol: column 'name' must hold class indices"):
            NNClassifier(labelCol="name").fit(df)
        with pytest.raises(ConfigError, match="^conf: data.weight_column is set by the param weightCol"):
            NNRegressor(conf={"data.weight_column": "w"}).fit(df)
        with pytest.raises(ConfigError, match="^conf: model.task is set by the estimator"):
            NNClassifier(conf={"model.task": "regression"}).fit(df)
        with pytest.raises(DataError, match="^predictionCol: the DataFrame already has a column 'label'"):
            NNRegressor(predictionCol="label").fit(df)
        negative = _friedman(spark, w=np.where(np.arange(N) == 5, -1.0, 1.0))
        with pytest.raises(DataError) as caught:
            NNRegressor(weightCol="w", **{**PARAMS, "rounds": 1}).fit(negative)
        assert str(caught.value).startswith("weightCol 'w'") and "row 5 of partition 0" in str(caught.value)
        # a regressor's model file is no classification model, nor the reverse
        nn = fitted.stages[-1]
        wrong = NNClassificationModel(nn.model_file)
        with pytest.raises(
            ConfigError,
            match="^NNClassificationModel.transform: the model file holds a model of "
            "model.task=regression; .* use NNRegressionModel$",
        ):
            wrong.transform(df)
        nn.write().overwrite().save(str(tmp_path / "regressor"))
        with pytest.raises(
            DataError,
            match=r"regressor: holds a nnlib.spark.NNRegressionModel, not a "
            r"NNClassificationModel",
        ):
            NNClassificationModel.load(str(tmp_path / "regressor"))
        assert NNRegressionModel.load(str(tmp_path / "regressor")).numTargets == 1


def test_the_estimators_save_and_load_with_their_column_params(spark, tmp_path):
    from pyspark.ml import Pipeline

    from nnlib.spark import NNClassifier, NNRegressor

    with on("classic"):
        for estimator in (
            NNRegressor(
                labelCol="price", weightCol="w", validationIndicatorCol="v", conf={"train.patience": 2}, **PARAMS
            ),
            NNClassifier(weightCol="w", validationIndicatorCol="v", **PARAMS),
        ):
            path = str(tmp_path / type(estimator).__name__)
            Pipeline(stages=[estimator]).write().overwrite().save(path)
            back = Pipeline.load(path).getStages()[0]
            assert type(back) is type(estimator) and back.uid == estimator.uid
            assert {p.name: v for p, v in back.extractParamMap().items()} == {
                p.name: v for p, v in estimator.extractParamMap().items()
            }
            assert back.getWeightCol() == "w" and back.getValidationIndicatorCol() == "v"
            config = back.nnlib_config("dataframe://x")
            assert (config.data.weight_column, config.data.validation_column) == ("w", "v")
            assert config.model.task == back.task == ("regression" if type(back) is NNRegressor else "classification")
        # unset or empty, as MLlib reads these params: no weight column, no validation column
        config = NNRegressor(weightCol="").nnlib_config("dataframe://x")
        assert (config.data.weight_column, config.data.validation_column) == (None, None)
