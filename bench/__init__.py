"""The throughput benchmark (``python bench/throughput.py``): ``throughput`` is the command line, ``workload`` the
model and the rows, ``systems`` the implementations compared, ``measure`` timing and memory, ``report`` the tables."""
