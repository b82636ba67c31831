"""A Spark ML pipeline with NNClassifier on a Spark Connect server: fit, transform, save, load, transform.

    python examples/spark_connect_pipeline.py sc://127.0.0.1:15002     # a server you started (docs, "Spark Connect")
    python examples/spark_connect_pipeline.py 'local[4]'              # a server started in this process

The digits (1,797 rows of 64 pixels) go to the server as a DataFrame with a
string label; StringIndexer turns it into class indices, VectorAssembler the
pixels into a features vector, and NNClassifier trains an MLP with two
mappers on the server's executors. The fitted pipeline is saved to
``runs/connect-pipeline`` (a path the server writes: on this machine, the
same folder), loaded back, and must give the same predictions.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.feature import StringIndexer, VectorAssembler
from pyspark.sql import SparkSession
from sklearn.datasets import load_digits

from nnlib.spark import NNClassifier


def main(remote: str) -> None:
    spark = SparkSession.builder.remote(remote).getOrCreate()
    digits = load_digits()
    pixels = [f"px{i}" for i in range(digits.data.shape[1])]
    rows = [(*map(float, x), f"digit-{y}") for x, y in zip(digits.data, digits.target, strict=True)]
    df = spark.createDataFrame(rows, [*pixels, "digit"])

    pipeline = Pipeline(
        stages=[
            StringIndexer(inputCol="digit", outputCol="label"),
            VectorAssembler(inputCols=pixels, outputCol="features"),
            NNClassifier(mappers=2, hidden=[32], rounds=5, seed=1),
        ]
    )
    fitted = pipeline.fit(df)
    scored = fitted.transform(df).select("label", "prediction").toPandas()
    accuracy = float(np.mean(scored["label"] == scored["prediction"]))
    print(f"fitted on the server: training accuracy {accuracy:.4f}, {len(fitted.stages[-1].summary.rounds)} rounds")

    path = str(Path("runs/connect-pipeline").resolve())
    fitted.write().overwrite().save(path)
    loaded = PipelineModel.load(path)
    again = loaded.transform(df).select("label", "prediction").toPandas()
    same = bool((again["prediction"] == scored["prediction"]).all())
    print(f"saved to {path} and loaded back: the same predictions: {same}")
    spark.stop()
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "sc://127.0.0.1:15002")
