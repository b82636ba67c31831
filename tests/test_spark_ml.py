"""nnlib.spark: NNClassifier and its model in Spark ML pipelines, on a real SparkSession.

The oracles: ``nnlib run`` on the same config and rows trains the same
weights, bit for bit; the model's own ``score`` gives the accuracy MLlib's
evaluator computes from ``transform``; a saved and loaded pipeline
transforms to the same columns.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DIGIT_PIXELS

from nnlib.config import load_config
from nnlib.data.sources import load_digits
from nnlib.driver import run
from nnlib.errors import ConfigError, DataError

pytestmark = pytest.mark.slow  # a SparkSession

PIXELS = DIGIT_PIXELS
PARAMS = dict(mappers=2, hidden=[16], rounds=2, localEpochs=1, lr=0.1, batchSize=32, seed=3)
SAME_CONFIG = [
    "mappers=2",
    "model.hidden=[16]",
    "train.rounds=2",
    "train.local_epochs=1",
    "train.lr=0.1",
    "train.batch_size=32",
    "seed=3",
]


@pytest.fixture(scope="module")
def pipeline_fit(spark, digits_file, tmp_path_factory):
    """``Pipeline([StringIndexer, VectorAssembler, NNClassifier])`` fitted on the digits; its transform."""
    from pyspark.ml import Pipeline
    from pyspark.ml.feature import StringIndexer, VectorAssembler

    from nnlib.spark import NNClassifier

    df = spark.read.parquet(str(digits_file)).selectExpr("*", "concat('digit-', label) as digit")  # a name
    pipeline = Pipeline(
        stages=[
            StringIndexer(inputCol="digit", outputCol="indexed"),
            VectorAssembler(inputCols=PIXELS, outputCol="features"),
            NNClassifier(labelCol="indexed", conf={"train.momentum": 0.5}, **PARAMS),
        ]
    )
    fitted = pipeline.fit(df)
    return df, fitted, fitted.transform(df).cache(), tmp_path_factory.mktemp("saved")


def _columns(df) -> list:
    rows = df.select("rawPrediction", "probability", "prediction").collect()
    return [(r.rawPrediction.toArray().tolist(), r.probability.toArray().tolist(), r.prediction) for r in rows]


def test_a_pipeline_fits_transforms_saves_and_loads_to_the_same_output(pipeline_fit):
    from pyspark.ml import PipelineModel
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql.types import DoubleType

    from nnlib.spark import NNClassificationModel

    df, fitted, out, saved = pipeline_fit
    schema = out.schema
    assert isinstance(schema["rawPrediction"].dataType, VectorUDT) and isinstance(
        schema["probability"].dataType, VectorUDT
    )
    assert isinstance(schema["prediction"].dataType, DoubleType)
    before = _columns(out)
    assert len(before) == 1797 and all(len(r[1]) == 10 for r in before)
    assert all(abs(sum(r[1]) - 1) < 1e-6 and r[2] == float(np.argmax(r[1])) for r in before)
    fitted.write().overwrite().save(str(saved / "pipeline"))
    loaded = PipelineModel.load(str(saved / "pipeline"))
    nn = loaded.stages[-1]
    assert isinstance(nn, NNClassificationModel) and nn.getLabelCol() == "indexed"
    assert nn.getConf() == {"train.momentum": 0.5} and nn.getHidden() == [16] and nn.getSeed() == 3
    assert np.array_equal(nn.model.params, fitted.stages[-1].model.params)
    assert _columns(loaded.transform(df)) == before
    assert nn.summary.rounds == fitted.stages[-1].summary.rounds  # the training's table travels with it


def test_the_evaluators_accuracy_is_the_models_own_score(pipeline_fit):
    from pyspark.ml.evaluation import MulticlassClassificationEvaluator

    _, fitted, out, _ = pipeline_fit
    accuracy = MulticlassClassificationEvaluator(labelCol="indexed", metricName="accuracy").evaluate(out)
    rows = out.select("features", "indexed").collect()
    x = np.array([r.features.toArray() for r in rows])
    y = np.array([r.indexed for r in rows])
    model = fitted.stages[-1].model
    assert accuracy == model.score(x, y)
    assert 0.5 < accuracy < 1  # a trained model, not a perfect one: a wrong column would show
    proba = np.array([r.probability.toArray() for r in out.select("probability").collect()])
    assert np.array_equal(proba, model.predict_proba(x).astype(np.float64))


def test_the_summary_holds_every_rounds_row(pipeline_fit):
    _, fitted, _, _ = pipeline_fit
    nn = fitted.stages[-1]
    summary = nn.summary
    assert nn.hasSummary and len(summary.rounds) == 2 == summary.frames()["rounds"].shape[0]
    assert summary.rounds[-1]["test_accuracy"] == summary.summary["final_test_accuracy"]
    assert summary.summary["engine"] == "spark" and summary.summary["mappers"] == 2
    assert summary.summary["n_train"] + summary.summary["n_test"] == 1797


def test_the_estimator_trains_nnlib_runs_weights_bit_for_bit(spark, digits_file):
    from pyspark.ml.feature import VectorAssembler

    from nnlib.spark import NNClassifier

    df = VectorAssembler(inputCols=PIXELS, outputCol="features").transform(spark.read.parquet(str(digits_file)))
    assert df.rdd.getNumPartitions() == 1  # one file, one partition: rows in the file's order, as nnlib run reads
    model = NNClassifier(**PARAMS).fit(df)
    expected = run(
        load_config(None, [*SAME_CONFIG, "engine=local", f"data.source={digits_file}"]),
        log=lambda _: None,
        warn=lambda _: None,
    )
    assert np.array_equal(model.model.params, expected.params)
    assert model.summary.summary["final_test_accuracy"] == expected.summary["final_test_accuracy"]
    assert np.array_equal(model.model.file.mean, expected.model.mean)  # the same standardisation
    # an array column of the same features trains the same weights
    arrays = spark.read.parquet(str(digits_file)).selectExpr(f"array({', '.join(PIXELS)}) as pixels", "label")
    assert np.array_equal(NNClassifier(featuresCol="pixels", **PARAMS).fit(arrays).model.params, expected.params)


def test_bad_columns_and_conf_are_one_line(spark, pipeline_fit, digits_file):
    from pyspark.ml.feature import VectorAssembler

    from nnlib.spark import NNClassifier

    df, fitted, _, _ = pipeline_fit
    nn = fitted.stages[-1]
    assembled = VectorAssembler(inputCols=PIXELS, outputCol="features").transform(df)
    with pytest.raises(DataError, match=r"^featuresCol: the DataFrame has no column 'features' \(columns are"):
        NNClassifier().fit(df)
    with pytest.raises(DataError, match=r"^labelCol: the DataFrame has no column 'y'"):
        NNClassifier(labelCol="y").fit(assembled)
    with pytest.raises(DataError, match="labelCol: column 'digit' must hold class indices 0, 1, ... .* got string"):
        NNClassifier(labelCol="digit").fit(assembled)
    with pytest.raises(DataError, match="featuresCol: column 'px0' must hold ML vectors"):
        NNClassifier(featuresCol="px0").fit(df)
    with pytest.raises(ConfigError, match="conf: train.lr is set by the param lr; set it there"):
        NNClassifier(conf={"train.lr": 0.5}).fit(assembled)
    with pytest.raises(ConfigError, match="hidden"):
        NNClassifier(hidden=[0]).nnlib_config("dataframe://x")
    narrow = VectorAssembler(inputCols=PIXELS[:63], outputCol="features").transform(df)
    with pytest.raises(
        DataError, match="featuresCol: column 'features' holds vectors of 63 features, the model takes 64"
    ):
        nn.transform(narrow)
    with pytest.raises(DataError, match="featuresCol: the DataFrame has no column 'features'"):
        nn.transform(df)
    # an array column carries no length: the executors refuse the row they meet, in one line inside Spark's error
    arrays = df.selectExpr(f"array({', '.join(PIXELS[:63])}) as features")
    with pytest.raises(Exception, match="DataError: featuresCol 'features': the model takes 64 features, got 63"):
        nn.transform(arrays).collect()


def test_a_users_module_trains_through_conf_and_its_model_saves_and_loads(spark, digits_file, tmp_path):
    from pyspark.ml.feature import VectorAssembler

    from nnlib.spark import NNClassificationModel, NNClassifier

    df = VectorAssembler(inputCols=PIXELS, outputCol="features").transform(spark.read.parquet(str(digits_file)))
    own = {"model.type": "module", "model.module": "user_models.tiny:make", "data.image_shape": [1, 8, 8]}
    model = NNClassifier(conf=own, **PARAMS).fit(df)
    expected = run(
        load_config(
            None, [*SAME_CONFIG, "engine=local", f"data.source={digits_file}", *[f"{k}={v}" for k, v in own.items()]]
        ),
        log=lambda _: None,
        warn=lambda _: None,
    )
    assert model.model.header["architecture"]["module"] == "user_models.tiny:make"
    assert np.array_equal(model.model.params, expected.params)  # BatchNorm's running statistics included
    model.write().overwrite().save(str(tmp_path / "m"))
    loaded = NNClassificationModel.load(str(tmp_path / "m"))
    assert _columns(loaded.transform(df)) == _columns(model.transform(df))
    x, y = load_digits()
    assert model.model.score(x, y) > 0.8
