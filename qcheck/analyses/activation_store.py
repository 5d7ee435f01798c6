"""Float activations computed once and kept for the steps that read them: in memory, on disk beyond a budget.

The suffix sessions of the node sensitivity (`qcheck.analyses.suffix`) start in the
middle of the graph and read the float tensors at their cut. Those come from
one run of the float model per batch of samples; this store keeps them for
every group that needs them. When they would take more than `budget` bytes,
the rest go to .npy files in a temporary folder (deleted on close), and the
report says so.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from qcheck.scratch import new_temp_folder

DEFAULT_BUDGET = 1 << 30  # bytes of float activations kept in memory


class ActivationStore:
    def __init__(self, budget: int = DEFAULT_BUDGET):
        self.budget = budget
        self.memory: dict[tuple[int, str], np.ndarray] = {}
        self.files: dict[tuple[int, str], Path] = {}
        self.bytes_in_memory = 0
        self.bytes_on_disk = 0
        self._folder: Path | None = None

    def put(self, batch: int, values: dict[str, np.ndarray]) -> None:
        for name, value in values.items():
            key = (batch, name)
            if self.bytes_in_memory + value.nbytes <= self.budget:
                self.memory[key] = value
                self.bytes_in_memory += value.nbytes
            else:
                if self._folder is None:
                    self._folder = new_temp_folder("activations")
                path = self._folder / f"{len(self.files)}.npy"
                np.save(path, value)
                self.files[key] = path
                self.bytes_on_disk += value.nbytes

    def get(self, batch: int, names: list[str]) -> dict[str, np.ndarray]:
        return {n: self.memory[(batch, n)] if (batch, n) in self.memory else np.load(self.files[(batch, n)])
                for n in names}

    def describe(self) -> dict:
        return {"tensors": len(self.memory) + len(self.files), "bytes_in_memory": self.bytes_in_memory,
                "bytes_on_disk": self.bytes_on_disk, "budget_bytes": self.budget}

    def close(self) -> None:
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None
        self.memory.clear()
        self.files.clear()

    def __enter__(self) -> ActivationStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
