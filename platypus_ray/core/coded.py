"""String columns held on the driver as small integer codes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Coded:
    """A string column held as integer codes into its distinct values: the driver keeps a few bytes
    per row instead of a Python string per row (at 1M rows, about 600 MB of strings)."""

    codes: np.ndarray
    names: list[str]

    @classmethod
    def of(cls, values: Coded | np.ndarray | list) -> Coded:
        if isinstance(values, Coded):
            return values
        names, codes = np.unique(np.asarray(values, dtype=object).astype(str), return_inverse=True)
        return cls(codes.astype(np.int32), [str(name) for name in names])

    def __len__(self) -> int:
        return len(self.codes)

    def take(self, rows: np.ndarray) -> Coded:
        return Coded(self.codes[rows], self.names)

    def name(self, row: int) -> str:
        return self.names[self.codes[row]]

    def in_order_of_appearance(self) -> list[int]:
        """The codes that occur, by the first row holding each."""
        present, first = np.unique(self.codes, return_index=True)
        return present[np.argsort(first, kind="stable")].tolist()
