"""QTensor: one weight tensor as a view of the mapped file (raw blocks, never copied)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kernels.qtypes import QType, dequantize


@dataclass(eq=False)
class QTensor:
    name: str
    qtype: QType
    dims: tuple[int, ...]  # GGUF order: dims[0] is the contiguous (fastest) axis
    offset: int  # absolute byte offset of the data in the file
    nbytes: int
    data: np.ndarray | None  # uint8 view, shape (rows, row_bytes)

    @classmethod
    def view_of(cls, buf, name: str, qtype: QType, dims: tuple[int, ...], offset: int, nbytes: int) -> "QTensor":
        rows = nbytes // qtype.row_bytes(dims[0])
        data = np.frombuffer(buf, dtype=np.uint8, count=nbytes, offset=offset).reshape(rows, -1)
        return cls(name, qtype, tuple(dims), offset, nbytes, data)

    @property
    def shape(self) -> tuple[int, ...]:
        """numpy order: (..., rows, cols)."""
        return tuple(reversed(self.dims))

    @property
    def rows(self) -> int:
        return self.data.shape[0]

    @property
    def cols(self) -> int:
        return self.dims[0]

    @property
    def row_bytes(self) -> int:
        return self.data.shape[1]

    @property
    def n_elements(self) -> int:
        return self.rows * self.cols

    def dequantize(self, rows: slice | np.ndarray | None = None) -> np.ndarray:
        """float32 copy of all rows (or of the chosen rows), shape (rows, cols)."""
        raw = self.data if rows is None else self.data[rows]
        return dequantize(raw, self.qtype)

    def __repr__(self) -> str:
        return f"QTensor({self.name!r}, {self.qtype.name}, shape={self.shape}, offset={self.offset}, nbytes={self.nbytes})"
