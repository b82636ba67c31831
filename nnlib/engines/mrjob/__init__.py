"""The mrjob (Hadoop streaming) engine: one job per round, the partition job, and their wire format."""
