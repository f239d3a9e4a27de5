"""Benchmark: the chunked snapshot extract against a one-shot pandas.read_sql baseline."""
