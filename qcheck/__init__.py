"""qcheck: find where an int8 ONNX model loses accuracy, and what to do about it."""

from threadpoolctl import threadpool_limits

__version__ = "0.1.0"

# numpy's BLAS (OpenBLAS) splits every dot product over its own threads, which spin-wait for
# work and fight ONNX Runtime's threads for the cores. qcheck's dot products are error sums over
# one tensor at a time, bound by memory, not arithmetic: with one BLAS thread an output
# comparison took 1.4 ms, with two threads beside a busy ORT session 31 ms (measured on the
# 2-core machine). So the process keeps one BLAS thread.
threadpool_limits(1, user_api="blas")
