"""ORT's histogram calibrators (entropy, percentile) fed in chunks, so memory does not grow with the data.

`HistogramCalibrater.collect_data` runs the model on every sample the reader gives, keeps every exposed
tensor of every sample, then builds the histograms from all of them at once: calibration tensors of 500
samples of a detector are tens of GB. It can be called again (its collector merges what it is given), so
here the reader stops after a chunk of samples that fits the memory budget, and `collect_data` is called
once per chunk.

ORT's collector widens a histogram when a later chunk reaches beyond the first chunk's range, which would
make the ranges depend on the chunk size (and so on `memory_mb`). So when the data take more than one
chunk, a first pass takes each tensor's extent over all samples (reading one sample's tensors at a time),
and every histogram starts on the bins the whole data would have given it: the chunks then only add counts,
and the ranges are those of a single `collect_data` over all samples (tests/quantize/test_histograms.py).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# ORT's collect_data holds a chunk's tensors as a list, stacks them (np.asarray), flattens the stack and,
# for symmetric percentiles, takes its absolute value: about three copies of the chunk at once
COPIES = 3


class ChunkReader:
    """A calibration data reader over samples [start, stop) of a reader-like `source` (`sample(i)`)."""

    def __init__(self, sample: Callable[[int], dict], start: int, stop: int) -> None:
        self.sample, self.i, self.stop = sample, start, stop

    def get_next(self) -> dict | None:
        if self.i >= self.stop:
            return None
        self.i += 1
        return self.sample(self.i - 1)

    def __len__(self) -> int:
        return self.stop - self.i

    def set_range(self, start_index: int, end_index: int) -> None:  # ORT's strided calibration
        self.i = start_index


def chunk_size(calibrator, first: dict, budget_bytes: int) -> int:
    """Samples per chunk: the budget over the bytes of one sample's calibrated tensors (measured on `first`)."""
    outputs = calibrator.infer_session.run(None, first)
    per_sample = sum(o.nbytes for o in outputs if isinstance(o, np.ndarray)) * COPIES
    return max(1, budget_bytes // max(per_sample, 1))


def collect_streamed(calibrator, sample: Callable[[int], dict], n: int, budget_bytes: int) -> int:
    """Feeds `calibrator` (an ORT HistogramCalibrater whose graph is augmented) samples 0..n-1 in chunks that fit
    `budget_bytes`; returns the chunk size (n: one `collect_data`, as ORT does it)."""
    chunk = chunk_size(calibrator, sample(0), budget_bytes) if n > 1 else 1
    if chunk >= n:
        calibrator.collect_data(ChunkReader(sample, 0, n))
        return n
    _seed(calibrator, sample, n)
    for start in range(0, n, chunk):
        calibrator.collect_data(ChunkReader(sample, start, min(n, start + chunk)))
    return chunk


def _extents(calibrator, sample: Callable[[int], dict], n: int, absolute: bool) -> dict[str, tuple]:
    """Per calibrated tensor: (min, max) over all samples, and (min |x|, max |x|) when `absolute`, each in the
    tensor's own type, as ORT's collector takes them (nanmin/nanmax)."""
    names = [o.name for o in calibrator.infer_session.get_outputs()]
    wanted = set(calibrator.tensors_to_calibrate)
    ext: dict[str, list] = {}
    for i in range(n):
        for name, arr in zip(names, calibrator.infer_session.run(None, sample(i))):
            if name not in wanted or not isinstance(arr, np.ndarray) or arr.size == 0:
                continue
            now = [np.nanmin(arr), np.nanmax(arr)]
            if absolute:
                a = np.absolute(arr)
                now += [np.nanmin(a), np.nanmax(a)]
            old = ext.get(name)
            ext[name] = now if old is None else [min(old[0], now[0]), max(old[1], now[1]), *(
                [min(old[2], now[2]), max(old[3], now[3])] if absolute else [])]
    return {k: tuple(v) for k, v in ext.items()}


def _seed(calibrator, sample: Callable[[int], dict], n: int) -> None:
    """Starts every tensor's histogram, empty, on the bins ORT's collector would give all `n` samples at once."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    collector = HistogramCollector(method=calibrator.method, symmetric=calibrator.symmetric,
                                   num_bins=calibrator.num_bins, num_quantized_bins=calibrator.num_quantized_bins,
                                   percentile=calibrator.percentile, scenario=calibrator.scenario)
    absolute = calibrator.method == "percentile" and calibrator.symmetric  # HistogramCollector.collect's choice
    bins = calibrator.num_bins
    for name, ext in _extents(calibrator, sample, n, absolute).items():
        lo, hi = ext[0], ext[1]
        empty = np.zeros(bins, dtype=np.intp)
        if absolute:  # collect_absolute_value: np.histogram(|x|, bins) over [min |x|, max |x|]
            edges = np.histogram_bin_edges(np.array([ext[2], ext[3]], dtype=ext[3].dtype), bins=bins)
            collector.histogram_dict[name] = (empty, edges.astype(ext[3].dtype), lo, hi)
        else:  # collect_value: np.histogram(x, bins, range=(-t, t)), t the largest |extent|
            threshold = np.array(max(abs(lo), abs(hi)), dtype=lo.dtype)
            edges = np.histogram_bin_edges(np.empty(0, dtype=lo.dtype), bins, range=(-threshold, threshold))
            collector.histogram_dict[name] = (empty, edges, lo, hi, threshold)
    calibrator.collector = collector
