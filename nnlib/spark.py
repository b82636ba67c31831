"""nnlib in Spark ML: :class:`NNClassifier` and :class:`NNRegressor`, pure-Python ``pyspark.ml`` Estimators,
and their Models.

    from pyspark.ml import Pipeline
    from pyspark.ml.feature import StringIndexer, VectorAssembler
    from nnlib.spark import NNClassifier

    pipeline = Pipeline(stages=[StringIndexer(inputCol="digit", outputCol="label"),
                                VectorAssembler(inputCols=pixel_columns, outputCol="features"),
                                NNClassifier(mappers=2, hidden=[32], rounds=5)])
    fitted = pipeline.fit(train_df)
    fitted.transform(test_df).select("prediction", "probability")
    fitted.write().overwrite().save("models/digits")     # PipelineModel.load("models/digits") reads it back

``NNRegressor(labelCol="price", weightCol="w")`` trains a regressor
(``model.task=regression``) the same way: one numeric label column, or a
Vector or array column of several targets; its model's ``prediction`` is a
double, or an ML Vector of the targets. Both estimators take ``weightCol``
(sample weights) and ``validationIndicatorCol`` (a boolean column marking
the validation rows ``train.patience`` watches), as MLlib's do, and work
with MLlib's evaluators (their ``weightCol`` too), ``CrossValidator`` and
``TrainValidationSplit``, on classic and Spark Connect sessions.

``fit`` trains as ``nnlib run`` does with ``engine=spark`` (the long-lived
stage by default), reading the DataFrame where it lives: the features and
labels are persisted in the executors, each row numbered by its partition
and its order there, and reach their mapper by Spark's shuffle; no row goes
through the driver except the held-out test rows (``data.test_fraction`` of
the rows, 0.2 by default, scored every round; past
``spark.collect_held_out_mb`` the mappers keep and score them, except in a
regression or weighted run, whose held-out rows always come to the driver).
The params are nnlib's config keys under MLlib's names; ``conf`` takes any
other dotted key (``{"train.optimizer": "adam", "data.test_fraction": 0.1}``).
The same config and rows in the same order train the same weights as
``nnlib run``, bit for bit.

The model (:class:`NNClassificationModel`, :class:`NNRegressionModel`)
holds an nnlib model file (the weights, the standardisation, the classes or
the targets and their statistics): a classifier's ``transform`` adds
``rawPrediction`` (the logits) and ``probability`` (ML vectors) and
``prediction`` (double), as MLlib's classifiers do; a regressor's adds
``prediction`` in the targets' own units. ``model.model`` is the
:class:`nnlib.model.model.Model`, ``model.summary`` the training's
:class:`nnlib.api.Run` (the rounds.csv rows, the summary). ``save`` writes
the params as metadata JSON and the model file as the data, as MLlib's
models do; a Pipeline holding it saves and loads too.
"""

from __future__ import annotations

import os
import threading
import uuid
from contextlib import contextmanager
from typing import Any

from pyspark import keyword_only
from pyspark.ml import Estimator
from pyspark.ml import Model as SparkModel
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import (
    HasFeaturesCol,
    HasLabelCol,
    HasPredictionCol,
    HasProbabilityCol,
    HasRawPredictionCol,
    HasSeed,
    HasValidationIndicatorCol,
    HasWeightCol,
)
from pyspark.ml.util import (
    DefaultParamsReadable,
    DefaultParamsReader,
    DefaultParamsWritable,
    DefaultParamsWriter,
    MLReadable,
    MLReader,
    MLWritable,
    MLWriter,
)

from nnlib.api import Run, as_overrides, train
from nnlib.config import Config, build_config
from nnlib.driver import warn
from nnlib.engines import make_engine
from nnlib.engines.spark.ml import (
    add_predictions,
    add_regression_predictions,
    features_column,
    frame_message,
    output_columns,
    training_frame,
)
from nnlib.engines.spark.predict import SharedModel, model_bytes, model_from_bytes, spark_error_line
from nnlib.engines.spark.session import ship_code
from nnlib.errors import ConfigError, DataError, EngineError, NnlibError
from nnlib.model.model import Model

__all__ = ["NNClassifier", "NNClassificationModel", "NNRegressor", "NNRegressionModel"]

# each param and the nnlib config key it sets
PARAM_KEYS = {
    "mappers": "mappers",
    "hidden": "model.hidden",
    "rounds": "train.rounds",
    "localEpochs": "train.local_epochs",
    "lr": "train.lr",
    "batchSize": "train.batch_size",
    "combine": "combine",
    "seed": "seed",
}
# the column params that set an nnlib key when they name a column (unset or empty: none, as MLlib reads them)
COLUMN_KEYS = {"weightCol": "data.weight_column", "validationIndicatorCol": "data.validation_column"}
# the keys the estimator sets itself: where the rows come from, and the task its class trains
OWN_KEYS = ("engine", "data.source", "data.features_column", "data.label_column", "data.label_columns", "model.task")


def _to_conf(value) -> dict:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise TypeError(f"conf must be a dict of nnlib config keys (e.g. {{'train.optimizer': 'adam'}}), got {value!r}")
    return dict(value)


class _NNParams(HasFeaturesCol, HasLabelCol, HasPredictionCol, HasSeed, HasWeightCol, HasValidationIndicatorCol):
    """The params every nnlib stage shares (an estimator, and its model, which keeps how it was trained):
    the input and output columns, nnlib's training params and ``conf``."""

    task = "classification"  # the model.task the stage trains (a class attribute, not a param)

    mappers = Param(
        Params._dummy(),
        "mappers",
        "mappers training in parallel, one Spark task each (>= 1)",
        typeConverter=TypeConverters.toInt,
    )
    hidden = Param(
        Params._dummy(), "hidden", "hidden layer sizes of the MLP, e.g. [64]", typeConverter=TypeConverters.toListInt
    )
    rounds = Param(
        Params._dummy(),
        "rounds",
        "rounds: each mapper trains, then the results are combined",
        typeConverter=TypeConverters.toInt,
    )
    localEpochs = Param(
        Params._dummy(),
        "localEpochs",
        "epochs each mapper trains on its shard per round",
        typeConverter=TypeConverters.toInt,
    )
    lr = Param(Params._dummy(), "lr", "learning rate", typeConverter=TypeConverters.toFloat)
    batchSize = Param(Params._dummy(), "batchSize", "mini-batch size", typeConverter=TypeConverters.toInt)
    combine = Param(
        Params._dummy(),
        "combine",
        "how the mappers' results are combined: average, weighted, sum, sum_updates, gradient, ist",
        typeConverter=TypeConverters.toString,
    )
    conf = Param(
        Params._dummy(),
        "conf",
        "any other nnlib config key, dotted, and its value (e.g. {'train.optimizer': 'adam'})",
        typeConverter=_to_conf,
    )

    def __init__(self, *args):
        super().__init__(*args)
        defaults = Config()
        self._setDefault(
            mappers=defaults.mappers,
            hidden=list(defaults.model.hidden),
            rounds=defaults.train.rounds,
            localEpochs=defaults.train.local_epochs,
            lr=defaults.train.lr,
            batchSize=defaults.train.batch_size,
            combine=defaults.combine,
            seed=defaults.seed,
            conf={},
        )

    def getMappers(self) -> int:
        return self.getOrDefault(self.mappers)

    def getHidden(self) -> list[int]:
        return self.getOrDefault(self.hidden)

    def getRounds(self) -> int:
        return self.getOrDefault(self.rounds)

    def getLocalEpochs(self) -> int:
        return self.getOrDefault(self.localEpochs)

    def getLr(self) -> float:
        return self.getOrDefault(self.lr)

    def getBatchSize(self) -> int:
        return self.getOrDefault(self.batchSize)

    def getCombine(self) -> str:
        return self.getOrDefault(self.combine)

    def getConf(self) -> dict:
        return self.getOrDefault(self.conf)

    def outputs(self) -> dict[str, str]:
        """The output columns by param (``predictionCol``, ...), in the order transform adds them."""
        raise NotImplementedError

    def column_param(self, param: str) -> str | None:
        """The column ``weightCol`` or ``validationIndicatorCol`` names; None when it is unset or empty (every
        row weighs 1, no row is marked for validation), as MLlib reads these params."""
        return (self.getOrDefault(param) or None) if self.isDefined(param) else None

    def nnlib_config(self, source: str) -> Config:
        """The nnlib config these params say, reading ``source`` (the estimator's DataFrame): ``model.task`` the
        class's, ``data.weight_column`` and ``data.validation_column`` when ``weightCol`` and
        ``validationIndicatorCol`` name columns. A bad value, or a ``conf`` key that a param or the estimator
        sets, is one ConfigError line."""
        conf = self.getConf()
        for key in conf:
            param = next((p for p, k in {**PARAM_KEYS, **COLUMN_KEYS}.items() if k == key), None)
            if param is not None:
                raise ConfigError(f"conf: {key} is set by the param {param}; set it there, not in conf")
            if key in OWN_KEYS:
                raise ConfigError(
                    f"conf: {key} is set by the estimator ({type(self).__name__} trains "
                    f"model.task={self.task} on the DataFrame's featuresCol and labelCol); leave it "
                    "out of conf"
                )
        data_keys: dict[str, Any] = {
            "source": source,
            "features_column": self.getFeaturesCol(),
            "label_column": self.getLabelCol(),
        }
        for param, key in COLUMN_KEYS.items():
            if self.column_param(param) is not None:
                data_keys[key.split(".")[1]] = self.column_param(param)
        tree: dict[str, Any] = {"engine": "spark", "data": data_keys, "model": {"task": self.task}}
        for param, key in PARAM_KEYS.items():
            *sections, name = key.split(".")
            node = tree
            for section in sections:
                node = node.setdefault(section, {})
            node[name] = self.getOrDefault(param)
        return build_config(tree, as_overrides(conf), source=type(self).__name__, overrides_source="conf")


class _NNClassifierParams(_NNParams, HasProbabilityCol, HasRawPredictionCol):
    """The params of :class:`NNClassifier` and :class:`NNClassificationModel`."""

    task = "classification"

    def outputs(self) -> dict[str, str]:
        """The output columns by param, in the order transform adds them."""
        return {
            "rawPredictionCol": self.getRawPredictionCol(),
            "probabilityCol": self.getProbabilityCol(),
            "predictionCol": self.getPredictionCol(),
        }


class _NNRegressorParams(_NNParams):
    """The params of :class:`NNRegressor` and :class:`NNRegressionModel`."""

    task = "regression"

    def outputs(self) -> dict[str, str]:
        return {"predictionCol": self.getPredictionCol()}


class _NNSetters(Params):
    """The setters every nnlib stage has (each returns the stage)."""

    def setFeaturesCol(self, value: str):
        return self._set(featuresCol=value)

    def setPredictionCol(self, value: str):
        return self._set(predictionCol=value)


class _NNEstimatorSetters(_NNSetters):
    """The setters of the estimators' own params: the columns they read, nnlib's training params and conf."""

    def setLabelCol(self, value: str):
        return self._set(labelCol=value)

    def setWeightCol(self, value: str):
        return self._set(weightCol=value)

    def setValidationIndicatorCol(self, value: str):
        return self._set(validationIndicatorCol=value)

    def setMappers(self, value: int):
        return self._set(mappers=value)

    def setHidden(self, value: list[int]):
        return self._set(hidden=value)

    def setRounds(self, value: int):
        return self._set(rounds=value)

    def setLocalEpochs(self, value: int):
        return self._set(localEpochs=value)

    def setLr(self, value: float):
        return self._set(lr=value)

    def setBatchSize(self, value: int):
        return self._set(batchSize=value)

    def setCombine(self, value: str):
        return self._set(combine=value)

    def setSeed(self, value: int):
        return self._set(seed=value)

    def setConf(self, value: dict):
        return self._set(conf=value)


class _NNEstimator(Estimator, _NNParams, _NNEstimatorSetters, DefaultParamsReadable, DefaultParamsWritable):
    """What :class:`NNClassifier` and :class:`NNRegressor` share: ``fit`` (check the columns, train as
    ``nnlib run`` does on the Spark engine, wrap the model file) and ``save``. A subclass gives its params
    class (``task``, ``outputs``) and ``model_class``."""

    model_class: type  # the Model class fit returns
    _input_kwargs: dict[str, Any]  # keyword_only's record of the keywords given

    def write(self) -> MLWriter:
        return _ParamsWriter(self)

    def _fit(self, dataset):
        what = f"{type(self).__name__}.fit"
        features, label = self.getFeaturesCol(), self.getLabelCol()
        weight, validation = self.column_param("weightCol"), self.column_param("validationIndicatorCol")
        # a missing or unusable features column: one line, before any job (training_frame checks the others)
        features_column(dataset, features, "float32")
        # as MLlib's fit does: the output columns must be free before the training, not only at transform
        output_columns(dataset, self.outputs())
        name = f"{self.uid}-{uuid.uuid4().hex[:8]}"
        config = self.nnlib_config(f"dataframe://{name}")
        # the DataFrame's own session (classic or Spark Connect), whatever this thread's active one is
        engine = make_engine(config, warn, spark_session=dataset.sparkSession)
        with _ONE_FIT_AT_A_TIME, spark_errors(what):
            frame = training_frame(
                dataset,
                features,
                label,
                self.getConf().get("data.key_column"),
                weight=weight,
                validation=validation,
                regression=self.task == "regression",
            )
            try:
                engine.reader.add_frame(frame, name)
                run = train(config, engine=engine, write=False, warn=warn)
            except DataError as exc:  # the reader names the rows by partition: say which column, which row
                raise DataError(
                    frame_message(str(exc), config.data.source, features, label, weight=weight, validation=validation)
                ) from None
            finally:
                engine.reader.remove_frame(config.data.source)
                frame.unpersist()
        return self._copyValues(self.model_class(model_bytes(run.model), run))


# Fits in several threads (CrossValidator's and TrainValidationSplit's ``parallelism``) train one after the
# other: each holds ``mappers`` task slots together for its whole training (a barrier stage, or rounds that
# need every shard at once), so fits side by side only compete for the slots, and more of them than the
# cluster holds would wait on each other until a timeout. Their evaluation still runs side by side.
_ONE_FIT_AT_A_TIME = threading.Lock()


@contextmanager
def spark_errors(what: str):
    """An error from Spark (a Spark Connect ``AnalysisException``, ``SparkConnectGrpcException``, a py4j error)
    as one :class:`nnlib.errors.EngineError` line: ``what``, the error class and the root cause."""
    try:
        yield
    except NnlibError:
        raise
    except Exception as exc:  # noqa: BLE001
        if not _from_spark(exc):
            raise
        raise EngineError(f"{what}: {spark_error_line(exc)}") from None


def _from_spark(exc: BaseException) -> bool:
    return type(exc).__module__.startswith(("pyspark.errors", "py4j"))


_COMMON_PARAMS_DOC = """``featuresCol`` (an ML Vector or an array of numbers), ``weightCol`` (a
    numeric column of sample weights, >= 0, finite, not all 0: each row's loss and the run's metrics are
    weighted by it, ``combine="weighted"`` weighs mappers by their total weight; unset or empty: every row
    weighs 1), ``validationIndicatorCol`` (a boolean column, true marking the training rows held out for
    validation, which ``train.patience`` in ``conf`` stops on, the best round's weights kept), and nnlib's
    ``mappers``, ``hidden``, ``rounds``, ``localEpochs``, ``lr``, ``batchSize``, ``combine``, ``seed``, with
    nnlib's defaults; ``conf`` holds any other nnlib key (``{"train.momentum": 0.9}``). A missing or wrong
    column, or a bad value, raises a one-line :class:`nnlib.errors.NnlibError` (``DataError``,
    ``ConfigError``); a bad value met by Spark's tasks (a negative weight, a null target) is one line too,
    naming the param, the column and the row (its partition and offset there)."""


class NNClassifier(_NNEstimator, _NNClassifierParams):
    __doc__ = f"""An nnlib MLP trained on a DataFrame's features and labels by Spark (the long-lived stage).

    Params: ``labelCol`` (class indices 0, 1, ...; StringIndexer's doubles work), ``predictionCol``,
    ``probabilityCol``, ``rawPredictionCol``, {_COMMON_PARAMS_DOC}
    """

    @keyword_only
    def __init__(
        self,
        *,
        featuresCol: str = "features",
        labelCol: str = "label",
        predictionCol: str = "prediction",
        probabilityCol: str = "probability",
        rawPredictionCol: str = "rawPrediction",
        weightCol: str | None = None,
        validationIndicatorCol: str | None = None,
        mappers: int | None = None,
        hidden: list[int] | None = None,
        rounds: int | None = None,
        localEpochs: int | None = None,
        lr: float | None = None,
        batchSize: int | None = None,
        combine: str | None = None,
        seed: int | None = None,
        conf: dict | None = None,
    ):
        super().__init__()
        self.setParams(**self._input_kwargs)

    @keyword_only
    def setParams(
        self,
        *,
        featuresCol: str = "features",
        labelCol: str = "label",
        predictionCol: str = "prediction",
        probabilityCol: str = "probability",
        rawPredictionCol: str = "rawPrediction",
        weightCol: str | None = None,
        validationIndicatorCol: str | None = None,
        mappers: int | None = None,
        hidden: list[int] | None = None,
        rounds: int | None = None,
        localEpochs: int | None = None,
        lr: float | None = None,
        batchSize: int | None = None,
        combine: str | None = None,
        seed: int | None = None,
        conf: dict | None = None,
    ):
        """Set the params given (None leaves a param at its value)."""
        return self._set(**{k: v for k, v in self._input_kwargs.items() if v is not None})

    def setProbabilityCol(self, value: str) -> NNClassifier:
        return self._set(probabilityCol=value)

    def setRawPredictionCol(self, value: str) -> NNClassifier:
        return self._set(rawPredictionCol=value)


class NNRegressor(_NNEstimator, _NNRegressorParams):
    __doc__ = f"""An nnlib MLP regressor (``model.task=regression``) trained on a DataFrame by Spark.

    Params: ``labelCol`` (a numeric column: one target; or an ML Vector or an array of numbers: several
    targets, each row the same length), ``predictionCol`` (a double for one target, an ML Vector of the
    targets for several), {_COMMON_PARAMS_DOC} The loss is ``model.loss`` (``squared`` by default;
    ``absolute``, ``huber`` with ``model.huber_delta``, in ``conf``); the targets are standardised for
    training (``data.standardize_target``) and predicted in their own units. The model's summary holds the
    rounds' RMSE, MAE and R² (``test_rmse``, ...), weighted as :class:`RegressionEvaluator` weighs them with
    its ``weightCol``.
    """

    @keyword_only
    def __init__(
        self,
        *,
        featuresCol: str = "features",
        labelCol: str = "label",
        predictionCol: str = "prediction",
        weightCol: str | None = None,
        validationIndicatorCol: str | None = None,
        mappers: int | None = None,
        hidden: list[int] | None = None,
        rounds: int | None = None,
        localEpochs: int | None = None,
        lr: float | None = None,
        batchSize: int | None = None,
        combine: str | None = None,
        seed: int | None = None,
        conf: dict | None = None,
    ):
        super().__init__()
        self.setParams(**self._input_kwargs)

    @keyword_only
    def setParams(
        self,
        *,
        featuresCol: str = "features",
        labelCol: str = "label",
        predictionCol: str = "prediction",
        weightCol: str | None = None,
        validationIndicatorCol: str | None = None,
        mappers: int | None = None,
        hidden: list[int] | None = None,
        rounds: int | None = None,
        localEpochs: int | None = None,
        lr: float | None = None,
        batchSize: int | None = None,
        combine: str | None = None,
        seed: int | None = None,
        conf: dict | None = None,
    ):
        """Set the params given (None leaves a param at its value)."""
        return self._set(**{k: v for k, v in self._input_kwargs.items() if v is not None})


class _NNModel(SparkModel, _NNParams, _NNSetters, MLReadable, MLWritable):
    """What :class:`NNClassificationModel` and :class:`NNRegressionModel` share: the nnlib model file (bytes),
    the training run, save and load. A subclass gives its params class (``task``, ``outputs``) and
    ``_scores(dataset, shared, key)``, the DataFrame with its output columns."""

    def __init__(self, model_file: bytes | None = None, training: Run | None = None):
        super().__init__()
        self._model_file = model_file
        self._training = training
        self._model: Model | None = None
        self._shared: SharedModel | None = None  # the model file for the executors, in the scoring closure

    @property
    def model_file(self) -> bytes:
        """The nnlib model file's bytes (``Model.save``'s format)."""
        if self._model_file is None:
            raise RuntimeError(f"this {type(self).__name__} holds no model file")
        return self._model_file

    @property
    def model(self) -> Model:
        """The :class:`nnlib.model.model.Model`: weights, standardisation, classes or targets (``predict`` on
        arrays)."""
        if self._model is None:
            self._model = model_from_bytes(self.model_file)
        return self._model

    @property
    def numFeatures(self) -> int:
        return self.model.n_features

    @property
    def hasSummary(self) -> bool:
        return self._training is not None

    @property
    def summary(self) -> Run:
        """The training run: ``.rounds`` (rounds.csv's rows as dicts), ``.summary`` (summary.json's dict),
        ``.mappers`` (mapper_times.csv's rows), ``.frames()`` (pandas)."""
        if self._training is None:
            raise RuntimeError(f"this {type(self).__name__} holds no training summary")
        return self._training

    def _scores(self, dataset, shared: SharedModel, key: str | None):
        """``dataset`` with the model's output columns."""
        raise NotImplementedError

    def _transform(self, dataset):
        what = f"{type(self).__name__}.transform"
        if self.model.is_regressor != (self.task == "regression"):
            task = "regression" if self.model.is_regressor else "classification"
            other = "NNRegressionModel" if self.model.is_regressor else "NNClassificationModel"
            raise ConfigError(
                f"{what}: the model file holds a model of model.task={task}; a "
                f"{type(self).__name__} takes model.task={self.task}: use {other}"
            )
        if self._shared is None:
            self._shared = SharedModel(self.model_file)
        with spark_errors(what):
            ship_code(dataset.sparkSession)  # a Connect server's workers get nnlib's code
            return self._scores(dataset, self._shared, self.model.header["preprocessing"].get("key_column"))

    def write(self) -> MLWriter:
        return _ModelWriter(self)

    @classmethod
    def read(cls) -> MLReader:
        return _ModelReader(cls)


_TRANSFORM_ERRORS_DOC = """A features column of another length than the model's is refused in one line:
    at ``transform`` for a Vector column whose metadata gives its size (VectorAssembler's), else by the
    executors when an action meets the row (a ``DataError`` line inside Spark's error). An output column
    that the DataFrame already has is refused at ``transform`` (and at the estimator's ``fit``) before any
    Spark job, in one ``DataError`` line naming the param to change, as MLlib refuses (``Column prediction
    already exists``); an empty name leaves that output out. A row the model cannot take (a NaN or infinite
    feature, another length) fails the action that meets it with Spark's ``PythonException``, whose last
    line is nnlib's: ``featuresCol 'features': features must be finite, got nan at row 5 of partition 1,
    feature 2`` (the row's offset in its partition of the DataFrame given to ``transform``), or ``... at the
    row whose id is 25`` when the model was trained with a key column (``data.key_column``:
    ``conf={"data.key_column": "id"}``, or a model of ``nnlib run`` on a keyed table) that the DataFrame
    has. A model file of the other task (a regressor's in an NNClassificationModel) is one ConfigError
    line."""


class NNClassificationModel(_NNModel, _NNClassifierParams):
    __doc__ = f"""A trained nnlib classifier as a Spark ML Model: ``transform`` adds ``rawPrediction``,
    ``probability`` (ML vectors, float32 values) and ``prediction`` (double) for the ``featuresCol`` column's
    raw features.

    {_TRANSFORM_ERRORS_DOC}
    """

    @property
    def numClasses(self) -> int:
        return self.model.n_classes

    def setProbabilityCol(self, value: str) -> NNClassificationModel:
        return self._set(probabilityCol=value)

    def setRawPredictionCol(self, value: str) -> NNClassificationModel:
        return self._set(rawPredictionCol=value)

    def _scores(self, dataset, shared: SharedModel, key: str | None):
        return add_predictions(
            dataset,
            shared,
            self.numFeatures,
            self.getFeaturesCol(),
            self.getRawPredictionCol(),
            self.getProbabilityCol(),
            self.getPredictionCol(),
            key,
        )


class NNRegressionModel(_NNModel, _NNRegressorParams):
    __doc__ = f"""A trained nnlib regressor as a Spark ML Model: ``transform`` adds ``prediction``, the targets in
    their own units (the training's standardisation undone): a double for one target, an ML Vector of the
    targets (float64, in :attr:`targetNames`' order) for several.

    {_TRANSFORM_ERRORS_DOC}
    """

    @property
    def numTargets(self) -> int:
        return len(self.model.target_names)

    @property
    def targetNames(self) -> list[str]:
        """The target columns the model was trained on, in prediction order."""
        return self.model.target_names

    def _scores(self, dataset, shared: SharedModel, key: str | None):
        return add_regression_predictions(
            dataset, shared, self.numFeatures, self.numTargets, self.getFeaturesCol(), self.getPredictionCol(), key
        )


NNClassifier.model_class = NNClassificationModel
NNRegressor.model_class = NNRegressionModel


class _ModelWriter(MLWriter):
    """``path/metadata``: the params and the training summary (JSON, as ``DefaultParamsWriter`` writes it);
    ``path/data``: the model file (Parquet, one binary cell). Both are DataFrame writes, so the same code
    saves through a classic session and through Spark Connect, to any path Spark writes.

    ``overwrite()`` replaces ``metadata`` and ``data`` by the writes' own mode: ``MLWriter.save`` would first
    delete the path through the JVM session, which a Spark Connect session has not (SPARK-55452).
    """

    def __init__(self, instance: _NNModel):
        super().__init__()
        self.instance = instance

    def save(self, path: str) -> None:
        if not isinstance(path, str):
            raise TypeError(f"path: must be a str (a path Spark writes), got {type(path).__name__}")
        with spark_errors(f"{type(self.instance).__name__}.save {path}"):
            self.saveImpl(path)

    def saveImpl(self, path: str) -> None:
        model, spark = self.instance, self.sparkSession
        extra = {}
        if model.hasSummary:
            run = model.summary
            extra["training"] = {
                "summary": run.summary,
                "rounds": run.rounds,
                "mappers": run.mappers,
                "skipped": run.skipped,
            }
        mode = "overwrite" if self.shouldOverwrite else "error"
        write_metadata(model, spark, path, mode, extra)
        spark.createDataFrame([(bytearray(model.model_file),)], "model binary").coalesce(1).write.mode(mode).parquet(
            os.path.join(path, "data")
        )


class _ParamsWriter(DefaultParamsWriter):
    """:class:`NNClassifier`'s params as ``DefaultParamsWriter`` saves them (``path/metadata``), written as
    :class:`_ModelWriter` writes, so that ``overwrite()`` works on Spark Connect too."""

    def save(self, path: str) -> None:
        if not isinstance(path, str):
            raise TypeError(f"path: must be a str (a path Spark writes), got {type(path).__name__}")
        with spark_errors(f"{type(self.instance).__name__}.save {path}"):
            write_metadata(self.instance, self.sparkSession, path, "overwrite" if self.shouldOverwrite else "error")


def write_metadata(instance, spark, path: str, mode: str, extra: dict | None = None) -> None:
    """``path/metadata``: ``instance``'s params as ``DefaultParamsWriter.saveMetadata`` writes them (one JSON
    line in a text file), by a DataFrame write in ``mode`` ("overwrite" or "error")."""
    metadata = DefaultParamsWriter._get_metadata_to_save(instance, spark, extraMetadata=extra)
    spark.createDataFrame([(metadata,)], "value string").coalesce(1).write.mode(mode).text(
        os.path.join(path, "metadata")
    )


class _ModelReader(MLReader):
    """Reads what :class:`_ModelWriter` wrote as a ``cls`` (:class:`NNClassificationModel` or
    :class:`NNRegressionModel`), through the active session (classic or Spark Connect)."""

    def __init__(self, cls: type | None = None):
        super().__init__()
        self.cls = cls or NNClassificationModel

    def load(self, path: str) -> _NNModel:
        name = self.cls.__name__
        with spark_errors(f"{name}.load {path}"):
            metadata = DefaultParamsReader.loadMetadata(path, self.sparkSession)
            saved = metadata.get("class", "")
            if saved.rsplit(".", 1)[-1] != name:
                raise DataError(f"{path}: holds a {saved}, not a {name}; load it with its own class")
            rows = self.sparkSession.read.parquet(os.path.join(path, "data")).collect()
        if len(rows) != 1:
            raise DataError(f"{path}: data/ must hold one model file, found {len(rows)}")
        data = bytes(rows[0]["model"])
        training = None
        if "training" in metadata:
            t = metadata["training"]
            training = Run(t["summary"], t["rounds"], t["mappers"], model_from_bytes(data), None, None, t["skipped"])
        model = self.cls(data, training)
        model._model = None if training is None else training.model
        model._resetUid(metadata["uid"])
        DefaultParamsReader.getAndSetParams(model, metadata)
        return model
