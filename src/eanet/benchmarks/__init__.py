"""Throughput benchmarks; :func:`eanet.benchmarks.data_path.benchmark_data_path` measures the data path."""
