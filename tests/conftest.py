"""Shared test setup.

One BLAS thread: the NumPy learner's small matmuls gain nothing from more, and on a busy
machine OpenBLAS's spinning worker threads slow a run down by an order of magnitude. This must
happen before NumPy is first imported.
"""

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
