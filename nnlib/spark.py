"""nnlib in Spark ML: :class:`NNClassifier`, a pure-Python ``pyspark.ml`` Estimator, and its Model.

    from pyspark.ml import Pipeline
    from pyspark.ml.feature import StringIndexer, VectorAssembler
    from nnlib.spark import NNClassifier

    pipeline = Pipeline(stages=[StringIndexer(inputCol="digit", outputCol="label"),
                                VectorAssembler(inputCols=pixel_columns, outputCol="features"),
                                NNClassifier(mappers=2, hidden=[32], rounds=5)])
    fitted = pipeline.fit(train_df)
    fitted.transform(test_df).select("prediction", "probability")
    fitted.write().overwrite().save("models/digits")     # PipelineModel.load("models/digits") reads it back

``fit`` trains as ``nnlib run`` does with ``engine=spark`` (the long-lived
stage by default), reading the DataFrame where it lives: the features and
labels are persisted in the executors, each row numbered by its partition
and its order there, and reach their mapper by Spark's shuffle; no row goes
through the driver except the held-out test rows (``data.test_fraction`` of
the rows, 0.2 by default, scored every round; past
``spark.collect_held_out_mb`` the mappers keep and score them). The params
are nnlib's config keys under MLlib's names; ``conf`` takes any other
dotted key (``{"train.optimizer": "adam", "data.test_fraction": 0.1}``).
The same config and rows in the same order train the same weights as
``nnlib run``, bit for bit.

The model (:class:`NNClassificationModel`) holds an nnlib model file (the
weights, the standardisation, the classes): ``transform`` adds
``rawPrediction`` (the logits) and ``probability`` (ML vectors) and
``prediction`` (double), as MLlib's classifiers do; ``model.model`` is the
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

from pyspark.ml import Estimator, Model as SparkModel
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import (HasFeaturesCol, HasLabelCol, HasPredictionCol, HasProbabilityCol,
                                     HasRawPredictionCol, HasSeed)
from pyspark.ml.util import (DefaultParamsReadable, DefaultParamsReader, DefaultParamsWritable, DefaultParamsWriter,
                             MLReadable, MLReader, MLWritable, MLWriter)
from pyspark import keyword_only

from nnlib.api import Run, as_overrides, train
from nnlib.config import Config, build_config
from nnlib.driver import warn
from nnlib.engines import make_engine
from nnlib.engines.spark.ml import (add_predictions, features_column, frame_message, label_column, output_columns,
                                    training_frame)
from nnlib.engines.spark.predict import SharedModel, model_bytes, model_from_bytes, spark_error_line
from nnlib.engines.spark.session import ship_code
from nnlib.errors import ConfigError, DataError, EngineError, NnlibError
from nnlib.model.model import Model

# each param and the nnlib config key it sets
PARAM_KEYS = {"mappers": "mappers", "hidden": "model.hidden", "rounds": "train.rounds",
              "localEpochs": "train.local_epochs", "lr": "train.lr", "batchSize": "train.batch_size",
              "combine": "combine", "seed": "seed"}
# the keys the estimator sets itself: where the rows come from
OWN_KEYS = ("engine", "data.source", "data.features_column", "data.label_column")


def _to_conf(value) -> dict:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise TypeError(f"conf must be a dict of nnlib config keys (e.g. {{'train.optimizer': 'adam'}}), "
                        f"got {value!r}")
    return dict(value)


class _NNParams(HasFeaturesCol, HasLabelCol, HasPredictionCol, HasProbabilityCol, HasRawPredictionCol, HasSeed):
    """The params of :class:`NNClassifier` and :class:`NNClassificationModel` (which keeps how it was trained)."""

    mappers = Param(Params._dummy(), "mappers", "mappers training in parallel, one Spark task each (>= 1)",
                    typeConverter=TypeConverters.toInt)
    hidden = Param(Params._dummy(), "hidden", "hidden layer sizes of the MLP, e.g. [64]",
                   typeConverter=TypeConverters.toListInt)
    rounds = Param(Params._dummy(), "rounds", "rounds: each mapper trains, then the results are combined",
                   typeConverter=TypeConverters.toInt)
    localEpochs = Param(Params._dummy(), "localEpochs", "epochs each mapper trains on its shard per round",
                        typeConverter=TypeConverters.toInt)
    lr = Param(Params._dummy(), "lr", "learning rate", typeConverter=TypeConverters.toFloat)
    batchSize = Param(Params._dummy(), "batchSize", "mini-batch size", typeConverter=TypeConverters.toInt)
    combine = Param(Params._dummy(), "combine", "how the mappers' results are combined: average, weighted, sum, "
                    "sum_updates, gradient, ist", typeConverter=TypeConverters.toString)
    conf = Param(Params._dummy(), "conf", "any other nnlib config key, dotted, and its value "
                 "(e.g. {'train.optimizer': 'adam'})", typeConverter=_to_conf)

    def __init__(self, *args):
        super().__init__(*args)
        defaults = Config()
        self._setDefault(mappers=defaults.mappers, hidden=list(defaults.model.hidden), rounds=defaults.train.rounds,
                         localEpochs=defaults.train.local_epochs, lr=defaults.train.lr,
                         batchSize=defaults.train.batch_size, combine=defaults.combine, seed=defaults.seed, conf={})

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

    def nnlib_config(self, source: str) -> Config:
        """The nnlib config these params say, reading ``source`` (the estimator's DataFrame); a bad value or
        a ``conf`` key that a param or the estimator sets is one ConfigError line."""
        conf = self.getConf()
        for key in conf:
            param = next((p for p, k in PARAM_KEYS.items() if k == key), None)
            if param is not None:
                raise ConfigError(f"conf: {key} is set by the param {param}; set it there, not in conf")
            if key in OWN_KEYS:
                raise ConfigError(f"conf: {key} is set by the estimator (the DataFrame and its featuresCol and "
                                  "labelCol); leave it out of conf")
        tree: dict[str, Any] = {"engine": "spark", "data": {"source": source, "features_column": self.getFeaturesCol(),
                                                            "label_column": self.getLabelCol()}}
        for param, key in PARAM_KEYS.items():
            *sections, name = key.split(".")
            node = tree
            for section in sections:
                node = node.setdefault(section, {})
            node[name] = self.getOrDefault(param)
        return build_config(tree, as_overrides(conf), source=type(self).__name__, overrides_source="conf")


class NNClassifier(Estimator, _NNParams, DefaultParamsReadable, DefaultParamsWritable):
    """An nnlib MLP trained on a DataFrame's features and labels by Spark (the long-lived stage).

    Params: ``featuresCol`` (an ML Vector or an array of numbers), ``labelCol`` (class indices 0, 1, ...;
    StringIndexer's doubles work), ``predictionCol``, ``probabilityCol``, ``rawPredictionCol``, and nnlib's
    ``mappers``, ``hidden``, ``rounds``, ``localEpochs``, ``lr``, ``batchSize``, ``combine``, ``seed``, with
    nnlib's defaults; ``conf`` holds any other nnlib key (``{"train.momentum": 0.9}``). A missing or wrong
    column, or a bad value, raises a one-line :class:`nnlib.errors.NnlibError` (``DataError``, ``ConfigError``).
    """

    @keyword_only
    def __init__(self, *, featuresCol: str = "features", labelCol: str = "label", predictionCol: str = "prediction",
                 probabilityCol: str = "probability", rawPredictionCol: str = "rawPrediction",
                 mappers: int | None = None, hidden: list[int] | None = None, rounds: int | None = None,
                 localEpochs: int | None = None, lr: float | None = None, batchSize: int | None = None,
                 combine: str | None = None, seed: int | None = None, conf: dict | None = None):
        super().__init__()
        self.setParams(**self._input_kwargs)

    @keyword_only
    def setParams(self, *, featuresCol: str = "features", labelCol: str = "label", predictionCol: str = "prediction",
                  probabilityCol: str = "probability", rawPredictionCol: str = "rawPrediction",
                  mappers: int | None = None, hidden: list[int] | None = None, rounds: int | None = None,
                  localEpochs: int | None = None, lr: float | None = None, batchSize: int | None = None,
                  combine: str | None = None, seed: int | None = None, conf: dict | None = None):
        """Set the params given (None leaves a param at its value)."""
        return self._set(**{k: v for k, v in self._input_kwargs.items() if v is not None})

    def setFeaturesCol(self, value: str) -> "NNClassifier":
        return self._set(featuresCol=value)

    def setLabelCol(self, value: str) -> "NNClassifier":
        return self._set(labelCol=value)

    def setPredictionCol(self, value: str) -> "NNClassifier":
        return self._set(predictionCol=value)

    def setProbabilityCol(self, value: str) -> "NNClassifier":
        return self._set(probabilityCol=value)

    def setRawPredictionCol(self, value: str) -> "NNClassifier":
        return self._set(rawPredictionCol=value)

    def setMappers(self, value: int) -> "NNClassifier":
        return self._set(mappers=value)

    def setHidden(self, value: list[int]) -> "NNClassifier":
        return self._set(hidden=value)

    def setRounds(self, value: int) -> "NNClassifier":
        return self._set(rounds=value)

    def setLocalEpochs(self, value: int) -> "NNClassifier":
        return self._set(localEpochs=value)

    def setLr(self, value: float) -> "NNClassifier":
        return self._set(lr=value)

    def setBatchSize(self, value: int) -> "NNClassifier":
        return self._set(batchSize=value)

    def setCombine(self, value: str) -> "NNClassifier":
        return self._set(combine=value)

    def setSeed(self, value: int) -> "NNClassifier":
        return self._set(seed=value)

    def setConf(self, value: dict) -> "NNClassifier":
        return self._set(conf=value)

    def write(self) -> MLWriter:
        return _ParamsWriter(self)

    def _fit(self, dataset) -> "NNClassificationModel":
        features, label = self.getFeaturesCol(), self.getLabelCol()
        features_column(dataset, features, "float32")  # a missing or unusable column: one line, before any job
        label_column(dataset, label)
        # as MLlib's fit does: the output columns must be free before the training, not only at transform
        output_columns(dataset, {"rawPredictionCol": self.getRawPredictionCol(),
                                 "probabilityCol": self.getProbabilityCol(), "predictionCol": self.getPredictionCol()})
        name = f"{self.uid}-{uuid.uuid4().hex[:8]}"
        config = self.nnlib_config(f"dataframe://{name}")
        # the DataFrame's own session (classic or Spark Connect), whatever this thread's active one is
        engine = make_engine(config, warn, spark_session=dataset.sparkSession)
        with _ONE_FIT_AT_A_TIME, spark_errors("NNClassifier.fit"):
            frame = training_frame(dataset, features, label, self.getConf().get("data.key_column"))
            try:
                engine.reader.add_frame(frame, name)
                run = train(config, engine=engine, write=False, warn=warn)
            except DataError as exc:  # the reader names the rows by partition: say which column, which row
                raise DataError(frame_message(str(exc), config.data.source, features, label)) from None
            finally:
                engine.reader.remove_frame(config.data.source)
                frame.unpersist()
        model = NNClassificationModel(model_bytes(run.model), run)
        return self._copyValues(model)


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


class NNClassificationModel(SparkModel, _NNParams, MLReadable, MLWritable):
    """A trained nnlib model as a Spark ML Model: ``transform`` adds ``rawPrediction``, ``probability`` (ML
    vectors, float32 values) and ``prediction`` (double) for the ``featuresCol`` column's raw features.

    A features column of another length than the model's is refused in one line: at ``transform`` for a
    Vector column whose metadata gives its size (VectorAssembler's), else by the executors when an action
    meets the row (a ``DataError`` line inside Spark's error).

    An output column (``predictionCol``, ``probabilityCol``, ``rawPredictionCol``) that the DataFrame already
    has is refused at ``transform`` (and at ``NNClassifier.fit``) before any Spark job, in one ``DataError``
    line naming the param to change, as MLlib refuses (``Column prediction already exists``); an empty name
    leaves that output out. A row the model cannot take (a NaN or infinite feature, another length) fails
    the action that meets it with Spark's ``PythonException``, whose last line is nnlib's: ``featuresCol
    'features': features must be finite, got nan at row 5 of partition 1, feature 2`` (the row's offset in
    its partition of the DataFrame given to ``transform``), or ``... at the row whose id is 25`` when the
    model was trained with a key column (``data.key_column``: ``conf={"data.key_column": "id"}``, or a model
    of ``nnlib run`` on a keyed table) that the DataFrame has.
    """

    def __init__(self, model_file: bytes | None = None, training: Run | None = None):
        super().__init__()
        self._model_file = model_file
        self._training = training
        self._model: Model | None = None
        self._shared: SharedModel | None = None  # the model file for the executors, in the scoring closure

    @property
    def model(self) -> Model:
        """The :class:`nnlib.model.model.Model`: weights, standardisation, classes (``predict`` on arrays)."""
        if self._model is None:
            self._model = model_from_bytes(self._model_file)
        return self._model

    @property
    def numFeatures(self) -> int:
        return self.model.n_features

    @property
    def numClasses(self) -> int:
        return self.model.n_classes

    @property
    def hasSummary(self) -> bool:
        return self._training is not None

    @property
    def summary(self) -> Run:
        """The training run: ``.rounds`` (rounds.csv's rows as dicts), ``.summary`` (summary.json's dict),
        ``.mappers`` (mapper_times.csv's rows), ``.frames()`` (pandas)."""
        if self._training is None:
            raise RuntimeError("this NNClassificationModel holds no training summary")
        return self._training

    def setFeaturesCol(self, value: str) -> "NNClassificationModel":
        return self._set(featuresCol=value)

    def setPredictionCol(self, value: str) -> "NNClassificationModel":
        return self._set(predictionCol=value)

    def setProbabilityCol(self, value: str) -> "NNClassificationModel":
        return self._set(probabilityCol=value)

    def setRawPredictionCol(self, value: str) -> "NNClassificationModel":
        return self._set(rawPredictionCol=value)

    def _transform(self, dataset):
        if self._shared is None:
            self._shared = SharedModel(self._model_file)
        with spark_errors("NNClassificationModel.transform"):
            ship_code(dataset.sparkSession)  # a Connect server's workers get nnlib's code
            return add_predictions(dataset, self._shared, self.numFeatures, self.getFeaturesCol(),
                                   self.getRawPredictionCol(), self.getProbabilityCol(), self.getPredictionCol(),
                                   self.model.header["preprocessing"].get("key_column"))

    def write(self) -> MLWriter:
        return _ModelWriter(self)

    @classmethod
    def read(cls) -> MLReader:
        return _ModelReader()


class _ModelWriter(MLWriter):
    """``path/metadata``: the params and the training summary (JSON, as ``DefaultParamsWriter`` writes it);
    ``path/data``: the model file (Parquet, one binary cell). Both are DataFrame writes, so the same code
    saves through a classic session and through Spark Connect, to any path Spark writes.

    ``overwrite()`` replaces ``metadata`` and ``data`` by the writes' own mode: ``MLWriter.save`` would first
    delete the path through the JVM session, which a Spark Connect session has not (SPARK-55452).
    """

    def __init__(self, instance: NNClassificationModel):
        super().__init__()
        self.instance = instance

    def save(self, path: str) -> None:
        if not isinstance(path, str):
            raise TypeError(f"path: must be a str (a path Spark writes), got {type(path).__name__}")
        with spark_errors(f"NNClassificationModel.save {path}"):
            self.saveImpl(path)

    def saveImpl(self, path: str) -> None:
        model, spark = self.instance, self.sparkSession
        extra = {}
        if model.hasSummary:
            run = model.summary
            extra["training"] = {"summary": run.summary, "rounds": run.rounds, "mappers": run.mappers,
                                 "skipped": run.skipped}
        mode = "overwrite" if self.shouldOverwrite else "error"
        write_metadata(model, spark, path, mode, extra)
        spark.createDataFrame([(bytearray(model._model_file),)], "model binary").coalesce(1).write.mode(mode) \
            .parquet(os.path.join(path, "data"))


class _ParamsWriter(DefaultParamsWriter):
    """:class:`NNClassifier`'s params as ``DefaultParamsWriter`` saves them (``path/metadata``), written as
    :class:`_ModelWriter` writes, so that ``overwrite()`` works on Spark Connect too."""

    def save(self, path: str) -> None:
        if not isinstance(path, str):
            raise TypeError(f"path: must be a str (a path Spark writes), got {type(path).__name__}")
        with spark_errors(f"{type(self.instance).__name__}.save {path}"):
            write_metadata(self.instance, self.sparkSession, path,
                           "overwrite" if self.shouldOverwrite else "error")


def write_metadata(instance, spark, path: str, mode: str, extra: dict | None = None) -> None:
    """``path/metadata``: ``instance``'s params as ``DefaultParamsWriter.saveMetadata`` writes them (one JSON
    line in a text file), by a DataFrame write in ``mode`` ("overwrite" or "error")."""
    metadata = DefaultParamsWriter._get_metadata_to_save(instance, spark, extraMetadata=extra)
    spark.createDataFrame([(metadata,)], "value string").coalesce(1).write.mode(mode) \
        .text(os.path.join(path, "metadata"))


class _ModelReader(MLReader):
    """Reads what :class:`_ModelWriter` wrote, through the active session (classic or Spark Connect)."""

    def load(self, path: str) -> NNClassificationModel:
        with spark_errors(f"NNClassificationModel.load {path}"):
            metadata = DefaultParamsReader.loadMetadata(path, self.sparkSession)
            rows = self.sparkSession.read.parquet(os.path.join(path, "data")).collect()
        if len(rows) != 1:
            raise DataError(f"{path}: data/ must hold one model file, found {len(rows)}")
        data = bytes(rows[0]["model"])
        training = None
        if "training" in metadata:
            t = metadata["training"]
            training = Run(t["summary"], t["rounds"], t["mappers"], model_from_bytes(data), None, None, t["skipped"])
        model = NNClassificationModel(data, training)
        model._model = None if training is None else training.model
        model._resetUid(metadata["uid"])
        DefaultParamsReader.getAndSetParams(model, metadata)
        return model
