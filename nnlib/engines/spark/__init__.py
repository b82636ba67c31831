"""The Spark engine: the long-lived barrier stage or one job per round, its reader and its driver-mapper exchange."""
