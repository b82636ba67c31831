"""nnlib: distributed batch training of neural networks on Spark, Hadoop (mrjob) and MPI."""

__version__ = "0.1.0"
