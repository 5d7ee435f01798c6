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


def test_running_out_of_memory_is_exit_4_with_what_to_change(monkeypatch, capsys):
    """MemoryError is the machine's limit, not the user's input nor a bug to report: exit 4, one message."""
    from qcheck.cli import main as cli

    def out_of_memory(args):
        raise MemoryError()

    monkeypatch.setitem(cli.COMMANDS, "validate", out_of_memory)
    assert cli.main(["validate", "policy.yaml"]) == 4
    err = capsys.readouterr().err
    assert "ran out of memory" in err and "memory_mb" in err and "Traceback" not in err


def test_a_sweeps_exit_code_is_its_worst_runs_bug_first_then_input_then_resources():
    from qcheck.run.sweep.summary import exit_code

    def rows(*codes):
        return [{"exit_code": c} for c in codes]

    assert exit_code(rows(0, 1, 4)) == 4  # a lost worker: the sweep is incomplete, worth running again
    assert exit_code(rows(4, 2, 1)) == 2  # but a policy error needs fixing first
    assert exit_code(rows(2, 3, 4)) == 3  # and a bug is reported whatever else happened
    assert exit_code(rows(0, 1)) == 1 and exit_code([]) == 0
