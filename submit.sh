#!/usr/bin/env bash
# Submit nnlib's Spark job to a cluster.
#
#   ./submit.sh [--master URL] [--env-archive ENV.tar.gz] [spark-submit options ...] [-- nnlib arguments ...]
#
# Examples:
#   ./submit.sh --master spark://head:7077 -- conf/mappers_8.yaml --set train.rounds=10
#   ./submit.sh --master yarn --env-archive nnlib-env.tar.gz --executor-memory 4g -- conf/default.yaml
#   ./submit.sh --master spark://head:7077 --py-files build/examples.zip -- examples/own_model.yaml
#
# What it does:
#   * zips the nnlib package into build/nnlib.zip and ships it with --py-files, so the
#     executors import the same code as the driver;
#   * --py-files A.zip,B.py (your own model.type=module code, zipped with its package folders) are
#     shipped with it, so the executors can import model.module;
#   * with --env-archive, ships a packed virtual environment (made with venv-pack or
#     conda-pack, holding numpy, pyarrow, pydantic, pyyaml, scikit-learn) with --archives
#     and points the executors' Python at it, as Spark's Python package management
#     docs describe; without it, the nodes' own python3 must have those packages;
#   * passes --master (or $SPARK_MASTER) to spark-submit, whose master the job uses (without one, that of
#     spark-defaults.conf in $SPARK_CONF_DIR, else local[*]), and every other option before `--` straight
#     to spark-submit (--conf, --driver-java-options, ... are kept as given);
#   * starts the driver with nnlib's logging configuration (spark.driver.defaultJavaOptions, which Spark
#     puts before your spark.driver.extraJavaOptions), so Spark prints none of its start-up lines.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
master="${SPARK_MASTER:-}"
env_archive=""
py_files=""
spark_opts=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --master) master="$2"; shift 2 ;;
    --master=*) master="${1#--master=}"; shift ;;
    --env-archive) env_archive="$2"; shift 2 ;;
    --env-archive=*) env_archive="${1#--env-archive=}"; shift ;;
    --py-files) py_files="$2"; shift 2 ;;
    --py-files=*) py_files="${1#--py-files=}"; shift ;;
    --) shift; break ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) spark_opts+=("$1"); shift ;;
  esac
done

if ! command -v spark-submit >/dev/null 2>&1; then
  echo "submit.sh: error: spark-submit not found on PATH (activate the virtual environment that has pyspark)" >&2
  exit 2
fi

# A local master binds to the loopback address, so Spark neither warns that the hostname resolves to one
# nor listens on the network; a cluster's driver keeps the address the workers reach it on. Without
# --master, the master is spark-defaults.conf's (as Spark reads it), else local[*].
used="$master"
if [[ -z $used ]]; then
  used=$(cd "$here" && python3 -c "from nnlib.engines.spark.session import defaults_file
print(defaults_file().get('spark.master', 'local[*]'))")
fi
if [[ $used == local* ]]; then
  export SPARK_LOCAL_IP="${SPARK_LOCAL_IP:-127.0.0.1}"
fi

(cd "$here" && python3 -m nnlib.util.ship "$here/build/nnlib.zip" >/dev/null)

extra=(--py-files "$here/build/nnlib.zip${py_files:+,$py_files}")
if [[ -n "$master" ]]; then
  extra+=(--master "$master")
fi
if [[ -n "$env_archive" ]]; then
  if [[ ! -f "$env_archive" ]]; then
    echo "submit.sh: error: --env-archive: file $env_archive does not exist" >&2
    exit 2
  fi
  extra+=(--archives "$env_archive#environment")
  # The driver keeps the local interpreter; executors use the unpacked environment.
  export PYSPARK_DRIVER_PYTHON="${PYSPARK_DRIVER_PYTHON:-$(command -v python3)}"
  export PYSPARK_PYTHON=./environment/bin/python
fi

exec spark-submit "${extra[@]}" \
  --conf "spark.driver.defaultJavaOptions=-Dlog4j2.configurationFile=file://$here/nnlib/engines/spark/log4j2.properties" \
  "${spark_opts[@]}" "$here/jobs/model_avg.py" "$@"
