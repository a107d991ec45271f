"""Kernel backends for the workbench.

`kernels` never imports `workbench`: a backend sees plain numpy arrays and weight
objects that have `.qtype`, `.shape` (rows, cols) and `.data` (raw uint8 rows).
"""

__all__ = ["qtypes", "base", "numpy_backend"]
