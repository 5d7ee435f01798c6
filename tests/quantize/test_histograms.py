"""Histogram calibration (entropy, percentile) collected in chunks gives the ranges of one collection.

With `memory_mb: 0` every sample is its own chunk; the histograms start on the bins the whole data give
(qcheck.quantize.histograms), so the ranges are equal to the last bit to those of ORT collecting all
samples at once, whatever the chunk size."""

import numpy as np
import pytest
from helpers import residual_cnn, write_npy_samples

from qcheck.data.readers import open_data
from qcheck.model.prepare import load_onnx, prepare_model
from qcheck.policy.spec import DataSource, Preprocess, QuantizationSpec
from qcheck.quantize import histograms
from qcheck.quantize.calibrate import calibrate


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hist")
    src = residual_cnn(tmp / "model.onnx")
    # samples of growing scale: a later chunk reaches beyond the first one's range
    for i in range(7):
        write_npy_samples(tmp / "calib", 1, scale=0.5 + 0.5 * i, seed=i)
        (tmp / "calib" / "0.npy").rename(tmp / "calib" / f"s{i}.npy")
    pm = prepare_model(load_onnx(src), src, {}, tmp)
    return pm, open_data(DataSource(tmp / "calib"), pm.inputs, Preprocess())


@pytest.mark.parametrize("method,symmetric", [("entropy", False), ("percentile", False), ("percentile", True)])
def test_chunked_histograms_give_the_ranges_of_one_collection(setup, monkeypatch, method, symmetric):
    pm, data = setup
    spec = QuantizationSpec(calibration=method, symmetric_activations=symmetric, percentile=99.9, num_bins=512)
    chunks = []
    real = histograms.collect_streamed
    monkeypatch.setattr("qcheck.quantize.calibrate.collect_streamed",
                        lambda *a: chunks.append(real(*a)) or chunks[-1])
    whole = calibrate(pm.path, data, spec, memory_mb=1024)
    chunked = calibrate(pm.path, data, spec, memory_mb=0)
    assert chunks == [len(data), 1]  # one collection, then one sample per chunk
    assert whole.ranges.keys() == chunked.ranges.keys() and len(whole.ranges) >= 8
    assert chunked.ranges == whole.ranges
    minmax = calibrate(pm.path, data, QuantizationSpec())
    assert any(abs(whole.ranges[k][1] - minmax.ranges[k][1]) > 1e-6 for k in whole.ranges)  # really a histogram


def test_chunk_size_is_the_budget_over_one_samples_tensors(setup):
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    pm, data = setup
    cal = create_calibrator(pm.path, [], augmented_model_path=str(pm.path.parent / "aug.onnx"),
                            calibrate_method=CalibrationMethod.Entropy)
    per_sample = sum(o.nbytes for o in cal.infer_session.run(None, data[0]))
    assert histograms.chunk_size(cal, data[0], 10 * histograms.COPIES * per_sample) == 10
    assert histograms.chunk_size(cal, data[0], 0) == 1
    assert np.isfinite(per_sample) and per_sample > 0
