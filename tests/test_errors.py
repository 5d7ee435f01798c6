"""errors.first_line: what of an ONNX Runtime exception reaches the user."""

from __future__ import annotations

from pathlib import Path

from qcheck.errors import first_line

ORT_OPSET_TEXT = (  # ORT 1.32's words for a model stamped with an opset it does not know, as it raises them
    "[ONNXRuntimeError] : 1 : FAIL : Load model from /tmp/w/m.onnx failed:/onnxruntime_src/onnxruntime/core/graph/"
    "model_load_utils.h:46 void onnxruntime::model_load_utils::ValidateOpsetForDomain(const std::unordered_map"
    "<std::__cxx11::basic_string<char>, int>&, const onnxruntime::logging::Logger&, bool, const std::string&, int) "
    "ONNX Runtime only *guarantees* support for models stamped with official released onnx opset versions.\n"
    "second line")


def test_first_line_drops_ort_source_location_and_names_the_users_file():
    text = first_line(RuntimeError(ORT_OPSET_TEXT), {Path("/tmp/w/m.onnx"): Path("model.onnx")})
    assert text == ("[ONNXRuntimeError] : 1 : FAIL : Load model from model.onnx failed:ONNX Runtime only "
                    "*guarantees* support for models stamped with official released onnx opset versions.")


def test_first_line_keeps_a_message_without_a_source_location():
    assert first_line(ValueError("shape (1, 3) vs (1, 4): the model.h file is fine")) == \
        "shape (1, 3) vs (1, 4): the model.h file is fine"
    assert first_line(KeyError()) == "KeyError"
