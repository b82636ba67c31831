"""What nnlib's Spark ML estimator (:mod:`nnlib.spark`) does to DataFrames: check and convert its input
columns, turn a DataFrame into a training source, add a model's predictions to a DataFrame.

Features arrive as an ML ``Vector`` column (``VectorAssembler``'s output) or
an array column of numbers; labels as a numeric column of class indices
(``StringIndexer``'s doubles are accepted when they are whole numbers).
Every problem with a column is one :class:`nnlib.errors.DataError` line
naming the param, the column and what it holds.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable

import numpy as np
import pandas as pd  # at module level: the pandas UDF's type hints are read in this module's namespace

from nnlib.data.checks import check_features
from nnlib.engines.spark.predict import SharedModel
from nnlib.engines.spark.reader import _FILE, _ROW
from nnlib.errors import DataError
from nnlib.model.model import softmax


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
            raise DataError(f"{param}: column '{name}' holds vectors of {size} features, the model takes {n_features}")
        return vector_to_array(F.col(name), dtype)
    if isinstance(field.dataType, ArrayType) and isinstance(field.dataType.elementType, NumericType):
        return F.col(name).cast(ArrayType(FloatType() if dtype == "float32" else DoubleType()))
    raise DataError(
        f"{param}: column '{name}' must hold ML vectors (VectorAssembler's output) or arrays of "
        f"numbers, got {field.dataType.simpleString()}"
    )


def label_column(df, name: str, param: str = "labelCol"):
    """The column ``name`` of class indices 0, 1, ... (any numeric type; whole numbers are checked by the
    reader, as for every source)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import NumericType

    field = _field(df, name, param)
    if not isinstance(field.dataType, NumericType):
        raise DataError(
            f"{param}: column '{name}' must hold class indices 0, 1, ... (numbers, such as "
            f"StringIndexer's output), got {field.dataType.simpleString()}"
        )
    return F.col(name)


def _target_column(df, name: str, regression: bool = True):
    """The label column as the reader takes it. Under regression: a numeric column as it is (one target), an
    ML Vector or an array of numbers (several targets, ``<labelCol>_0``, ...) as an array of doubles, anything
    else one DataError line saying so; under classification, class indices (:func:`label_column`)."""
    from pyspark.ml.functions import vector_to_array
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, BooleanType, DoubleType, NumericType

    if not regression:
        return label_column(df, name)
    field = _field(df, name, "labelCol")
    if isinstance(field.dataType, VectorUDT):
        return vector_to_array(F.col(name), "float64")
    if isinstance(field.dataType, ArrayType) and isinstance(field.dataType.elementType, NumericType):
        return F.col(name).cast(ArrayType(DoubleType()))
    if isinstance(field.dataType, NumericType) and not isinstance(field.dataType, BooleanType):
        return F.col(name)
    raise DataError(
        f"labelCol: column '{name}' must hold regression targets: numbers (one target), or an ML "
        f"Vector or array of numbers (several), got {field.dataType.simpleString()}"
    )


def _weight_column(df, name: str):
    """The sample weights as doubles (the reader refuses a negative, null or non-finite one, naming the row)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import BooleanType, NumericType

    field = _field(df, name, "weightCol")
    if not isinstance(field.dataType, NumericType) or isinstance(field.dataType, BooleanType):
        raise DataError(
            f"weightCol: column '{name}' must hold numbers (sample weights >= 0), got {field.dataType.simpleString()}"
        )
    return F.col(name).cast("double")


def _validation_column(df, name: str):
    """The validation flags, a boolean column (``validationIndicatorCol``: true marks a validation row)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import BooleanType

    field = _field(df, name, "validationIndicatorCol")
    if not isinstance(field.dataType, BooleanType):
        raise DataError(
            f"validationIndicatorCol: column '{name}' must hold booleans (true marks a validation "
            f"row), got {field.dataType.simpleString()}"
        )
    return F.col(name)


def training_frame(
    df,
    features: str,
    label: str,
    key: str | None = None,
    weight: str | None = None,
    validation: str | None = None,
    regression: bool = True,
):
    """The features (float32 arrays) and labels of ``df`` (and its ``key`` column, ``data.key_column``, which
    the model's header then names), persisted (memory and disk of the executors).

    The label column is kept as it is when numeric (class indices, or one regression target) and becomes
    an array of doubles when it holds ML Vectors or arrays of numbers (several regression targets, named
    ``<label>_0``, ``<label>_1``, ... in the model file). ``weight`` (``weightCol``, read with
    ``data.weight_column``) becomes doubles; ``validation`` (``validationIndicatorCol``, read with
    ``data.validation_column``) must be boolean. A missing column, or one of the wrong type, is one
    DataError line naming the param, before any Spark job; the values are checked by the reader.

    Training reads the rows several times (the survey, the held-out rows,
    the shards) and numbers them by partition and order each time, so they
    are computed once and kept; :meth:`unpersist` the result after training.
    """
    from pyspark import StorageLevel

    if key is not None and key not in df.columns:
        raise DataError(
            f"conf: data.key_column '{key}' is not a column of the DataFrame (columns are {df.columns[:10]})"
        )
    named = (
        ("featuresCol", features),
        ("labelCol", label),
        ("data.key_column", key),
        ("weightCol", weight),
        ("validationIndicatorCol", validation),
    )
    for param, name in named:
        if name in READER_COLUMNS:  # the reader adds these to the frame it reads: they would be two columns
            raise DataError(
                f"{param}: '{name}' is a name nnlib's reader gives its own columns "
                f"({', '.join(READER_COLUMNS)}); rename that column first"
            )
    columns = [
        features_column(df, features, "float32").alias(features),
        _target_column(df, label, regression).alias(label),
    ]
    taken = {features, label}
    for name, convert in ((weight, _weight_column), (validation, _validation_column)):
        if name is not None:
            if name in taken:
                raise DataError(
                    f"{'weightCol' if convert is _weight_column else 'validationIndicatorCol'}: "
                    f"'{name}' is also another param's column; give each its own column"
                )
            columns.append(convert(df, name).alias(name))
            taken.add(name)
    if key is not None and key not in taken:
        columns.append(key)
    return df.select(*columns).persist(StorageLevel.MEMORY_AND_DISK)


# monotonically_increasing_id(): the partition index in the upper 31 bits, the row's offset in it in the lower 33
_OFFSET_BITS = 33


def _row_names(ids: np.ndarray, keys, key: str | None):
    """``i -> str``: how a message names a batch's row ``i``: ``key``'s value when the DataFrame has a key
    column, else its partition and its offset there (``ids``: the rows' ``monotonically_increasing_id``)."""

    def name(i: int) -> str:
        if keys is not None:
            value = keys[i]
            value = value.item() if hasattr(value, "item") else value  # numpy's scalars print as np.int64(7)
            return f"the row whose {key} is {value!r}"
        position = int(ids[i])
        return f"row {position & ((1 << _OFFSET_BITS) - 1)} of partition {position >> _OFFSET_BITS}"

    return name


READER_COLUMNS = (_FILE, _ROW)  # the columns SparkReader.source_frame adds to a training frame

# how nnlib's reader names a DataFrame source's rows in its messages: the source's key and the partition
_PART_MESSAGE = re.compile(r"^data\.source partition (\d+)(: | )(.*)$", re.S)
_SAMPLE = re.compile(r"\bat sample (\d+)")


# the column a reader's message about a value begins with (tables.carried_arrays): its kind, name, key, target
_COLUMN_AT_FAULT = re.compile(
    r"^(target|label|weight|validation) column '((?:[^']|'(?! ))*)'"
    r"(?: \(data\.\w+\))?(?: \((target \d+)\))? "
)
# a driver's message about a whole column (every weight 0, no row or every row marked for validation)
_WHOLE_COLUMN = re.compile(
    r"^(?:data\.source )?\S+: data\.(weight|validation)_column '((?:[^']|'(?! ))*)':? (.*)$", re.S
)


def frame_message(
    message: str, source: str, features: str, label: str, weight: str | None = None, validation: str | None = None
) -> str:
    """A reader's message about a DataFrame given to :meth:`SparkReader.add_frame` (``data.source partition 3:
    features must be finite, got nan at sample 5, feature 2``) in the estimator's terms: the param and column
    at fault (``featuresCol``, ``labelCol``, ``weightCol`` when ``weight`` names it, ``validationIndicatorCol``
    when ``validation`` does), the row's offset in its partition (``featuresCol 'features': features must be
    finite, got nan at row 5 of partition 3, feature 2``, ``weightCol 'w': must hold finite numbers >= 0,
    got -1.0 at row 5 of partition 0``); a message about a whole weight or validation column
    (``weightCol 'w': every training row weighs 0; ...``) by its param; the source's internal name
    (``source``) as "the DataFrame"."""
    params = {"weight": ("weightCol", weight), "validation": ("validationIndicatorCol", validation)}
    whole = _WHOLE_COLUMN.match(message)
    if whole is not None and params[whole.group(1)][1] == whole.group(2):
        return f"{params[whole.group(1)][0]} '{whole.group(2)}': {whole.group(3)}"
    match = _PART_MESSAGE.match(message)
    if match is None:
        return message.replace(f"data.source {source}", "the DataFrame").replace(source, "the DataFrame")
    part, separator, rest = match.groups()
    column = _COLUMN_AT_FAULT.match(rest)
    if column is not None:  # "weight column 'w' (data.weight_column) must ...": the param, then what is wrong
        kind, name, target = column.groups()
        param_name, named = params.get(kind, ("labelCol", label))
        param = f"{param_name} '{named}'" + (f" ({target})" if target else "")
        rest = rest[column.end() :]
        separator = ": "
    elif rest.startswith("label") or f"'{label}'" in rest:
        param = f"labelCol '{label}'"
    else:
        param = f"featuresCol '{features}'"
    if separator == ": ":
        return f"{param}: " + _SAMPLE.sub(lambda m: f"at row {m.group(1)} of partition {part}", rest)
    return f"{param}: the DataFrame's partition {part} {rest}"


def _stack(values: np.ndarray, n_features: int, where: str, row_name) -> np.ndarray:
    """A batch's feature arrays (an object array of 1-d arrays) as ``(n, n_features)`` float64, checked
    (finite in float32): a DataError names ``where`` and the row (``row_name``, ``i -> str``)."""
    lengths = np.fromiter((-1 if v is None else len(v) for v in values), np.int64, len(values))
    bad = lengths != n_features
    if bad.any():
        i = int(np.argmax(bad))
        got = "an empty (null) value" if lengths[i] < 0 else f"{lengths[i]} features"
        raise DataError(f"{where}: the model takes {n_features} features, got {got} at {row_name(i)}")
    x = np.stack(list(values)).astype(np.float64, copy=False) if len(values) else np.zeros((0, n_features))
    return check_features(x, where, row_name=row_name) if len(values) else x


def output_columns(df, outputs: dict[str, str]) -> None:
    """Refuse, before any Spark job, output columns (``{param: column name}``; an empty name is left out) that
    ``df`` already has, or that two params share: ``withColumn`` would silently replace the column (MLlib
    refuses too: "Column prediction already exists"). Names compare as the session resolves them (ignoring
    case unless ``spark.sql.caseSensitive``). A clash is one DataError line naming the param and the column."""
    fold: Callable[[str], str]
    if str(df.sparkSession.conf.get("spark.sql.caseSensitive", "false")).lower() == "true":
        fold = str
    else:
        fold = str.lower
    have = {fold(c): c for c in df.columns}
    taken: dict[str, str] = {}
    for param, name in outputs.items():
        if not name:
            continue
        if fold(name) in have:
            raise DataError(
                f"{param}: the DataFrame already has a column '{have[fold(name)]}' (columns are "
                f"{df.columns[:10]}), which transform would replace; set {param} to another name, "
                "or drop or rename that column first"
            )
        if fold(name) in taken:
            raise DataError(
                f"{param}: '{name}' is also {taken[fold(name)]}'s column; give each output column its own name"
            )
        taken[fold(name)] = param


def helper_column(df, stem: str) -> str:
    """A name for a column nnlib adds to ``df`` for a while (and drops): ``stem`` and a random suffix, none of
    ``df``'s columns, so that it can never replace or shadow one of the user's."""
    names = {c.lower() for c in df.columns}
    while True:
        name = f"{stem}_{uuid.uuid4().hex[:12]}"
        if name.lower() not in names:
            return name


def _with_scores(df, shared: SharedModel, n_features: int, features: str, key: str | None, schema: str, scorer):
    """``(df with a struct column of the model's scores, that column's name)``: ``scorer(model, x)`` (a module
    function: it travels to the executors) turns a batch's checked features ``(n, n_features)`` float64 into
    a pandas DataFrame of ``schema``'s fields. A pandas UDF computes it, the model loaded once per Python
    worker; a row whose features are not finite, or not ``n_features`` long, fails the action that meets it
    with nnlib's one DataError line naming ``featuresCol``'s column and the row (:func:`_row_names`)."""
    from pyspark.sql import functions as F
    from pyspark.sql.functions import pandas_udf

    x = features_column(df, features, "float64", n_features)
    where = f"featuresCol '{features}'"
    key = key if key is not None and key in df.columns else None
    # each row's place in the input: its partition and offset, taken as the row enters (a nondeterministic
    # expression, so no filter after transform is pushed below it and changes the offsets), and its key
    rows = F.struct(F.monotonically_increasing_id().alias("id"), *([F.col(key).alias("key")] if key else []))

    # pyspark's overloads take a struct's schema as a StructType only; its runtime takes the DDL string too
    @pandas_udf(schema)  # type: ignore[call-overload]
    def score(batch: pd.Series, places: pd.DataFrame) -> pd.DataFrame:
        model = shared.get()
        keys = places["key"].to_numpy() if "key" in places else None
        try:
            x = _stack(batch.to_numpy(), model.n_features, where, _row_names(places["id"].to_numpy(), keys, key))
        except DataError as exc:
            # raised again here, from None: the worker's traceback (which Spark's error carries) is this one
            # frame and nnlib's line, the line an action's PythonException ends with
            raise DataError(str(exc)) from None
        return scorer(model, x)

    scores = helper_column(df, "_nnlib_scores")
    return df.withColumn(scores, score(x, rows)), scores


def _class_scores(model, x: np.ndarray) -> pd.DataFrame:
    logits = model.predict_logits(x)
    return pd.DataFrame(
        {
            "raw": list(logits.astype(np.float64)),
            "probability": list(softmax(logits).astype(np.float64)),
            "prediction": model.classes[logits.argmax(axis=1)].astype(np.float64),
        }
    )


def _regression_scores(model, x: np.ndarray) -> pd.DataFrame:
    y = model.predict(x)  # float64 (n,) for one target, (n, t) for several, in the targets' own units
    return pd.DataFrame({"prediction": y if y.ndim == 1 else list(y)})


def add_predictions(
    df,
    shared: SharedModel,
    n_features: int,
    features: str,
    raw_col: str,
    probability_col: str,
    prediction_col: str,
    key: str | None = None,
):
    """``df`` with a classifier's ``rawPrediction`` (the logits) and ``probability`` (ML vectors of float64
    holding the float32 values) and ``prediction`` (double, the class) columns; a column whose name is empty
    is left out, as MLlib's classifiers do. Computed by a pandas UDF, the model loaded once per Python worker.

    An output column ``df`` already has is refused here (:func:`output_columns`). A row whose features are
    not finite, or not ``n_features`` long, fails the action that meets it with nnlib's one DataError line
    (the last line of Spark's ``PythonException``) naming ``featuresCol``'s column and the row: ``key``'s
    value when ``key`` names a column of ``df``, else the row's partition and its offset in that partition.
    """
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F

    output_columns(
        df, {"rawPredictionCol": raw_col, "probabilityCol": probability_col, "predictionCol": prediction_col}
    )
    out, scores = _with_scores(
        df,
        shared,
        n_features,
        features,
        key,
        "raw array<double>, probability array<double>, prediction double",
        _class_scores,
    )
    for name, part in ((raw_col, "raw"), (probability_col, "probability")):
        if name:
            out = out.withColumn(name, array_to_vector(F.col(f"`{scores}`.{part}")))
    if prediction_col:
        out = out.withColumn(prediction_col, F.col(f"`{scores}`.prediction"))
    return out.drop(scores)


def add_regression_predictions(
    df, shared: SharedModel, n_features: int, n_targets: int, features: str, prediction_col: str, key: str | None = None
):
    """``df`` with a regressor's ``prediction`` column, in the targets' own units (float64): a double for one
    target (``n_targets`` 1), an ML Vector of the ``n_targets`` targets for several; an empty
    ``prediction_col`` adds nothing. Refusals as :func:`add_predictions`'s."""
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F

    output_columns(df, {"predictionCol": prediction_col})
    if not prediction_col:
        return df
    several = n_targets > 1
    out, scores = _with_scores(
        df,
        shared,
        n_features,
        features,
        key,
        "prediction array<double>" if several else "prediction double",
        _regression_scores,
    )
    column = F.col(f"`{scores}`.prediction")
    return out.withColumn(prediction_col, array_to_vector(column) if several else column).drop(scores)
