"""The grid ONNX Runtime gives an activation tensor (scale, zero point, integer range), computed without building.

A search screens candidates that only move grids (int16 activations, a widened range, another activation
type) on the emulation model by feeding it new grids; this module computes them the way ORT's QDQ quantizer
does when it builds the real model (its own `calc_quant_params`, after its range adjustments), so a screened
grid is the grid the real build would get.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from onnx import helper

from qcheck.errors import ModelError, Problem, first_line, raised_by_third_party
from qcheck.quantize.calibrate import Ranges, Recipe, ort_overrides, qdq_quantizer


@dataclass(frozen=True)
class Grid:
    """Values x are emulated as clip(round(x / scale), lo, hi) * scale (= DQ(Q(x)) with lo, hi the integer
    type's range minus the zero point)."""

    scale: float
    lo: float
    hi: float


def integer_grid(scale: float, zero_point: int, dtype: np.dtype) -> Grid:
    info = np.iinfo(dtype)
    return Grid(float(scale), float(info.min - int(zero_point)), float(info.max - int(zero_point)))


@contextmanager
def _refused(what: str):
    """ORT's quantizer refusing a range (NaN, a zero or infinite scale ...) as the build would: a ModelError, so a
    search records the candidate's error; anything raised outside ORT's code stays a bug of qcheck's."""
    try:
        yield
    except ModelError:
        raise
    except Exception as exc:  # ORT's quantization code raises plain ValueError/AssertionError/...
        if not raised_by_third_party(exc):
            raise
        raise ModelError(Problem(f"ONNX Runtime could not {what}: {type(exc).__name__}: {first_line(exc)}")) from exc


class GridCalculator:
    """Grids of the activation tensors of one model under a recipe's global settings, for any tensor override."""

    def __init__(self, float_model: Path, ranges: Ranges, recipe: Recipe):
        with _refused("set up its quantizer"):
            self.quantizer = qdq_quantizer(float_model, ranges, recipe)
            self.quantizer.calc_graph_quant_params()  # applies ORT's range adjustments (Relu/Clip inputs, Softmax)
        self._cache: dict[tuple[str, str], Grid | None] = {}

    def grid(self, tensor: str, override: dict) -> Grid | None:
        """The grid of `tensor` with the recipe override `override` ({quant_type, rmin, rmax, ...}); None for a
        tensor ORT has no range for."""
        key = (tensor, json.dumps(override, sort_keys=True, default=float))
        if key not in self._cache:
            self._cache[key] = self._compute(tensor, override)
        return self._cache[key]

    def _compute(self, tensor: str, override: dict) -> Grid | None:
        known = self.quantizer.tensors_range
        if known is None or tensor not in known:
            return None
        data = known[tensor]
        entry = ort_overrides(Recipe(overrides={tensor: override}))[tensor][0]
        with _refused(f"compute the grid of {tensor}"):
            params = self.quantizer.calc_quant_params(data, entry)
        dtype = helper.tensor_dtype_to_np_dtype(params["quant_type"])
        return integer_grid(float(np.asarray(params["scale"])), int(np.asarray(params["zero_point"])), dtype)
