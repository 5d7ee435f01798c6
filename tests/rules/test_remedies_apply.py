"""A finding proposes only remedies that can change something where it is."""

from qcheck.rules.engine import applicable_remedies

ALL = ["keep_float", "int16_activations", "per_channel", "calibration_method"]


def test_per_channel_is_not_proposed_for_nodes_without_weights():
    for op in ("Relu", "GlobalAveragePool", "Softmax", "Add"):
        assert applicable_remedies(ALL, {"op_type": op, "kind": "activation"}) == \
            ["keep_float", "int16_activations", "calibration_method"], op
    assert "per_channel" in applicable_remedies(ALL, {"op_type": "Conv", "kind": "activation"})


def test_weights_get_no_int16_activations_and_no_per_channel_when_already_per_channel():
    assert applicable_remedies(ALL, {"op_type": "Gemm", "kind": "weight", "per_channel": True}) == \
        ["keep_float", "calibration_method"]
    assert applicable_remedies(ALL, {"op_type": "Gemm", "kind": "weight", "per_channel": False}) == \
        ["keep_float", "per_channel", "calibration_method"]


def test_no_per_channel_when_the_recipe_already_has_it():
    row = {"op_type": "Conv", "kind": "activation"}
    assert "per_channel" not in applicable_remedies(ALL, row, weights_per_channel=True)


def test_model_scope_rows_keep_every_remedy():
    assert applicable_remedies(ALL, {"verdict_failed": 1}) == ALL
