"""Hardware target profiles: built-ins, user profiles that extend them, and clear errors."""

import math

from test_policy import messages, write

from qcheck.policy.loader import load_policy
from qcheck.policy.targets import builtin_names, builtin_profile


def test_every_builtin_profile_is_documented_and_consistent():
    assert set(builtin_names()) >= {"cpu", "gpu", "npu", "mcu", "edgetpu"}
    for name in builtin_names():
        t = builtin_profile(name)
        assert len(t.description) > 40, name
        assert t.prefer and set(t.prefer) <= set(t.schemes), name
        # A target without float fallback must not be able to pay for a float node.
        assert t.allows("float_node") == t.float_fallback, name
        assert t.allows("int16_tensor") == t.int16, name


def test_integer_only_targets_price_float_nodes_out():
    for name in ("npu", "mcu", "edgetpu"):
        t = builtin_profile(name)
        assert t.integer_only and not t.can_run("float16")
        assert math.isinf(t.cost("float_node", 1))
    assert builtin_profile("cpu").cost("float_node", 3) == 3 * builtin_profile("cpu").costs["float_node"]
    assert builtin_profile("npu").cost("int16_tensor", 2) == 2.0


def test_policy_names_a_builtin_target(tmp_path):
    p = write(tmp_path, "model: model.onnx\ndata:\n  calibration: calib\ntarget: mcu\n")
    t = load_policy(p).target
    assert t.name == "mcu" and not t.int16 and t.io == "int8"


def test_inline_profile_extends_a_builtin_and_changes_only_what_it_says(tmp_path):
    p = write(tmp_path, "model: model.onnx\ndata:\n  calibration: calib\ntarget:\n  name: our-npu\n"
                        "  extends: npu\n  int16: false\n  costs: {int16_tensor: null}\n")
    t = load_policy(p).target
    npu = builtin_profile("npu")
    assert t.name == "our-npu" and t.extends == "npu"
    assert not t.int16 and not t.allows("int16_tensor")
    assert t.schemes == npu.schemes and t.weights == npu.weights
    assert t.costs["explicit_range"] == npu.costs["explicit_range"]  # costs merge key by key


def test_profile_file_next_to_the_policy(tmp_path):
    (tmp_path / "dsp.yaml").write_text("extends: cpu\nfloat_fallback: false\n", encoding="utf-8")
    p = write(tmp_path, "model: model.onnx\ndata:\n  calibration: calib\ntarget: dsp.yaml\n")
    t = load_policy(p).target
    assert t.name == "dsp" and t.integer_only and math.isinf(t.cost("float_node"))


def test_unknown_target_suggests_the_closest(tmp_path):
    p = write(tmp_path, "model: model.onnx\ndata:\n  calibration: calib\ntarget: npuu\n")
    (msg,) = messages(p)
    assert f"{p}:4: unknown target 'npuu'" in msg and "did you mean 'npu'?" in msg


def test_bad_key_in_profile_file_names_that_file_and_line(tmp_path):
    prof = tmp_path / "dsp.yaml"
    prof.write_text("extends: cpu\nfloat_fallbak: false\n", encoding="utf-8")
    p = write(tmp_path, "model: model.onnx\ndata:\n  calibration: calib\ntarget: dsp.yaml\n")
    (msg,) = messages(p)
    assert msg.startswith(f"{prof}:2: unknown key 'float_fallbak'") and "float_fallback" in msg


def test_extending_an_unknown_target_is_refused(tmp_path):
    p = write(tmp_path, "model: model.onnx\ndata:\n  calibration: calib\ntarget:\n  extends: tpu\n")
    (msg,) = messages(p)
    assert "extends unknown target 'tpu'" in msg
