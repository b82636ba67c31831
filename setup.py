"""nnlib: distributed batch training of neural networks on Spark, Hadoop (mrjob) and MPI."""

from setuptools import find_packages, setup

TORCH = "torch==2.13.0"  # pinned: a newer or unpinned torch pulls several GB of CUDA packages
# mrjob's last release (2020) imports pipes, which Python 3.13 removed (standard-pipes brings it back), and
# distutils, which Python 3.12 removed (setuptools brings a copy)
MRJOB = ["mrjob==0.7.4", "standard-pipes; python_version >= '3.13'", "setuptools; python_version >= '3.12'"]
MPI = ["mpi4py>=4", "openmpi>=5"]  # the openmpi package brings mpiexec into the environment
MLFLOW = "mlflow>=2.10"  # the client with its database stores (sqlite: SQLAlchemy), the server and mlflow ui
ONNX = ["onnx>=1.16", "onnxruntime>=1.17"]  # nnlib export --format onnx: building the graph, checking it
# Spark Connect's client (spark.remote, SPARK_REMOTE, a Connect session): grpcio, grpcio-status,
# googleapis-common-protos and zstandard, as pyspark's own extra pins them for this pyspark
CONNECT = ["pyspark[connect]==4.3.0"]
# the linter and the type checker that tests/test_lint.py runs (.ci/ruff.toml, .ci/mypy.ini), pinned exactly: a new
# release brings new rules; with the stubs of the dependencies that ship no type information of their own
LINT = [
    "ruff==0.17.6",
    "mypy==2.4.1",
    "types-PyYAML==6.0.12.20261122",
    "types-tqdm==4.70.0.20261122",
    "types-grpcio==1.85.0.20261028",
    "pandas-stubs==2.3.3.260113",
    "pyarrow-stubs==20.0.0.20260819",
]
# the documentation site (docs/mkdocs.yml: mkdocs build --strict -f docs/mkdocs.yml), pinned exactly: a new release
# brings new warnings, and the build fails on any
DOCS = [
    "mkdocs==1.6.1",
    "mkdocs-material==9.8.2",
    "mkdocstrings==1.0.8",
    "mkdocstrings-python==2.0.11",
    "griffelib==2.4.1",
]

setup(
    name="nnlib",
    version="0.1.0",
    description="Distributed batch training of MLPs as a Spark job, a Hadoop streaming job and an MPI program",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["nnlib", "nnlib.*"]),
    package_data={"nnlib.engines.spark": ["log4j2.properties"]},
    install_requires=[
        "numpy>=1.24",
        "pyyaml>=6",
        "pydantic>=2.5,<3",
        "scikit-learn>=1.3",
        "threadpoolctl>=3",
        "pyarrow>=14",
        "pyspark==4.3.0",
        "pandas>=2.2,<3",  # pyspark's Arrow path (mapInArrow: Spark reading Parquet sources)
        "tqdm>=4.66",
        "matplotlib>=3.7",
    ],
    extras_require={
        "torch": [TORCH],
        "mrjob": MRJOB,
        "mpi": MPI,
        "tracking": [MLFLOW],
        "onnx": ONNX,
        "connect": CONNECT,
        "docs": DOCS,
        "bench": [TORCH, *MRJOB, *MPI],
        "test": [TORCH, *MRJOB, *MPI, MLFLOW, *ONNX, *CONNECT, *LINT, *DOCS, "pytest>=8"],
    },
    entry_points={"console_scripts": ["nnlib=nnlib.__main__:main"]},
)
