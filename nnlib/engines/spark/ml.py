"""What nnlib's Spark ML estimator (:mod:`nnlib.spark`) does to DataFrames: check and convert its input
columns, turn a DataFrame into a training source, add a model's predictions to a DataFrame.

Features arrive as an ML ``Vector`` column (``VectorAssembler``'s output) or
an array column of numbers; labels as a numeric column of class indices
(``StringIndexer``'s doubles are accepted when they are whole numbers).
Every problem with a column is one :class:`nnlib.errors.DataError` line
naming the param, the column and what it holds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd  # at module level: the pandas UDF's type hints are read in this module's namespace

from nnlib.engines.spark.predict import SharedModel
from nnlib.errors import DataError
from nnlib.model.model import softmax

_SCORES = "_nnlib_scores"  # the struct column the predictions are computed into


def _field(df, name: str, param: str):
    if name not in df.columns:
        raise DataError(f"{param}: the DataFrame has no column '{name}' (columns are {df.columns[:10]})")
    return df.schema[name]


def vector_size(field) -> int | None:
    """The length of an ML Vector column's vectors when its metadata says (``VectorAssembler`` writes it)."""
    attrs = field.metadata.get("ml_attr", {})
    return attrs.get("num_attrs")


def features_column(df, name: str, dtype: str, n_features: int | None = None, param: str = "featuresCol"):
    """The column ``name`` as an array of ``dtype`` ("float32" or "float64"): an ML Vector column through
    ``vector_to_array``, an array of numbers cast. With ``n_features``, a Vector column whose metadata gives
    another length is refused here; other wrong lengths are refused by the executors as they meet them."""
    from pyspark.ml.functions import vector_to_array
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, DoubleType, FloatType, NumericType

    field = _field(df, name, param)
    if isinstance(field.dataType, VectorUDT):
        size = vector_size(field)
        if n_features is not None and size is not None and size != n_features:
            raise DataError(f"{param}: column '{name}' holds vectors of {size} features, the model takes "
                            f"{n_features}")
        return vector_to_array(F.col(name), dtype)
    if isinstance(field.dataType, ArrayType) and isinstance(field.dataType.elementType, NumericType):
        return F.col(name).cast(ArrayType(FloatType() if dtype == "float32" else DoubleType()))
    raise DataError(f"{param}: column '{name}' must hold ML vectors (VectorAssembler's output) or arrays of "
                    f"numbers, got {field.dataType.simpleString()}")


def label_column(df, name: str, param: str = "labelCol"):
    """The column ``name`` of class indices 0, 1, ... (any numeric type; whole numbers are checked by the
    reader, as for every source)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import NumericType

    field = _field(df, name, param)
    if not isinstance(field.dataType, NumericType):
        raise DataError(f"{param}: column '{name}' must hold class indices 0, 1, ... (numbers, such as "
                        f"StringIndexer's output), got {field.dataType.simpleString()}")
    return F.col(name)


def training_frame(df, features: str, label: str):
    """The features (float32 arrays) and labels of ``df``, persisted (memory and disk of the executors).

    Training reads the rows several times (the survey, the held-out rows,
    the shards) and numbers them by partition and order each time, so they
    are computed once and kept; :meth:`unpersist` the result after training.
    """
    from pyspark import StorageLevel

    columns = [features_column(df, features, "float32").alias(features), label_column(df, label).alias(label)]
    return df.select(*columns).persist(StorageLevel.MEMORY_AND_DISK)


def _stack(values: np.ndarray, n_features: int, where: str) -> np.ndarray:
    """A batch's feature arrays (an object array of 1-d arrays) as ``(n, n_features)`` float64."""
    lengths = np.fromiter((-1 if v is None else len(v) for v in values), np.int64, len(values))
    bad = lengths != n_features
    if bad.any():
        i = int(np.argmax(bad))
        got = "an empty (null) value" if lengths[i] < 0 else f"{lengths[i]} features"
        raise DataError(f"{where}: the model takes {n_features} features, got {got} in a row")
    return np.stack(values).astype(np.float64, copy=False) if len(values) else np.zeros((0, n_features))


def add_predictions(df, shared: SharedModel, n_features: int, features: str, raw_col: str, probability_col: str,
                    prediction_col: str):
    """``df`` with the model's ``rawPrediction`` (the logits) and ``probability`` (ML vectors of float64 holding
    the float32 values) and ``prediction`` (double, the class) columns; a column whose name is empty is left
    out, as MLlib's classifiers do. Computed by a pandas UDF, the model loaded once per Python worker."""
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F
    from pyspark.sql.functions import pandas_udf

    x = features_column(df, features, "float64", n_features)
    where = f"featuresCol '{features}'"

    @pandas_udf("raw array<double>, probability array<double>, prediction double")
    def score(batch: pd.Series) -> pd.DataFrame:
        model = shared.get()
        logits = model.predict_logits(_stack(batch.to_numpy(), model.n_features, where))
        return pd.DataFrame({"raw": list(logits.astype(np.float64)),
                             "probability": list(softmax(logits).astype(np.float64)),
                             "prediction": model.classes[logits.argmax(axis=1)].astype(np.float64)})

    out = df.withColumn(_SCORES, score(x))
    for name, part in ((raw_col, "raw"), (probability_col, "probability")):
        if name:
            out = out.withColumn(name, array_to_vector(F.col(f"{_SCORES}.{part}")))
    if prediction_col:
        out = out.withColumn(prediction_col, F.col(f"{_SCORES}.prediction"))
    return out.drop(_SCORES)
