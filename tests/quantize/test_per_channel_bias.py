"""Per-channel weights on a token classifier (int32 ids -> Gather -> LayerNorm -> MatMul+Add -> Softmax).

ORT's pre-processing fuses MatMul+Add into a Gemm that keeps the Add's [1, N] bias; ORT's per-channel
quantizer reads a bias as 1-D and fails ("The truth value of an array ... is ambiguous"). qcheck
flattens such biases when it prepares the model, and quantizes per tensor any weight whose bias
cannot be flattened, saying so.
"""

import json

import numpy as np
import onnx
import onnxruntime as ort
from helpers import byte_classifier, write_policy, write_token_samples
from onnx import numpy_helper

from qcheck.cli.main import main
from qcheck.data.readers import open_data
from qcheck.model.prepare import load_onnx, prepare_model
from qcheck.policy.spec import DataSource, Preprocess, QuantizationSpec
from qcheck.quantize.calibrate import Recipe, build_quantized, calibrate, per_tensor_fallbacks


def _weight_scale(qmodel: onnx.ModelProto, weight: str) -> np.ndarray:
    """The scale of the DequantizeLinear that reads `weight`'s quantized initializer."""
    inits = {i.name: i for i in qmodel.graph.initializer}
    for node in qmodel.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0].startswith(weight):
            return numpy_helper.to_array(inits[node.input[1]])
    raise AssertionError(f"no DequantizeLinear for {weight}")


def test_run_with_per_channel_quantizes_the_classifier_weight_per_channel(tmp_path):
    byte_classifier(tmp_path / "model.onnx")
    write_token_samples(tmp_path / "calib", 8)
    policy = write_policy(tmp_path / "qcheck.yaml", {
        "model": "model.onnx", "data": {"calibration": "calib"}, "quantization": {"per_channel": True},
        "require": ["model.cosine >= 0.9"], "report": {"out": "out", "formats": ["html"]}})
    assert main(["run", str(policy), "--quiet"]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert any("b2" in n and "[1, N]" in n for n in results["model"]["notes"])
    qmodel = onnx.load(str(tmp_path / "out" / "model.quant.onnx"))
    assert _weight_scale(qmodel, "w2").shape == (4,)  # one scale per class: per channel


def test_a_weight_whose_bias_is_not_1d_falls_back_to_per_tensor(tmp_path):
    # the prepared model (ORT's fused Gemm, bias flattened) with a 2-D bias put back: what qcheck cannot flatten
    src = byte_classifier(tmp_path / "model.onnx")
    write_token_samples(tmp_path / "calib", 8)
    pm = prepare_model(load_onnx(src), src, {}, tmp_path)
    model = onnx.load(str(pm.path))
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm" and n.input[2] == "b2")
    bias = next(i for i in model.graph.initializer if i.name == gemm.input[2])
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias).reshape(1, -1), bias.name))
    onnx.save(model, str(tmp_path / "row_bias.onnx"))
    recipe = Recipe(per_channel=True)
    fallbacks = per_tensor_fallbacks(model, recipe)
    assert list(fallbacks) == [gemm.input[1]] and "per tensor" in fallbacks[gemm.input[1]]
    assert per_tensor_fallbacks(model, Recipe(per_channel=False)) == {}

    data = open_data(DataSource(tmp_path / "calib"), pm.inputs, Preprocess())
    ranges = calibrate(tmp_path / "row_bias.onnx", data, QuantizationSpec())
    out = build_quantized(tmp_path / "row_bias.onnx", ranges, recipe, tmp_path / "q.onnx")
    qmodel = onnx.load(str(out))
    assert _weight_scale(qmodel, gemm.input[1]).size == 1  # per tensor
    plain = onnx.load(str(build_quantized(pm.path, ranges, recipe, tmp_path / "plain.onnx")))
    assert _weight_scale(plain, gemm.input[1]).size == 4  # with its 1-D bias the weight is per channel
    for init in plain.graph.initializer:  # and nothing else changed
        if init.name.endswith("_scale") and not init.name.startswith((gemm.input[1], gemm.input[2])):
            mine = next(i for i in qmodel.graph.initializer if i.name == init.name)
            assert np.array_equal(numpy_helper.to_array(mine), numpy_helper.to_array(init)), init.name
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    probs = sess.run(None, data[0])[0]
    assert probs.shape == (1, 4) and abs(float(probs.sum()) - 1) < 0.05
