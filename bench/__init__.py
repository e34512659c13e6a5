"""Benchmarks (``make bench``): medians over repeated runs, each reported with the raw ceiling of the
same machine measured in the same run (raw aiokafka produce/consume, raw asyncpg COPY)."""
