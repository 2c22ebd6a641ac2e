"""Benchmarks: training, sampling and evaluation throughput against the machine's peak and plain PyTorch."""
