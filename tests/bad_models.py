"""Tiny real ONNX models that are wrong in one way each, for the bad-input corpus.

Each builder writes a model that ONNX accepts structurally (except where the
point is that it does not) and returns its path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from helpers import small_cnn
from onnx import TensorProto, helper, numpy_helper


def _save(nodes, inputs, outputs, inits, path: Path, opset: int = 13, extra_opsets=(), check: bool = True) -> Path:
    graph = helper.make_graph(nodes, path.stem, inputs, outputs,
                              initializer=[numpy_helper.from_array(a, n) for n, a in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), *extra_opsets])
    model.ir_version = 8
    if check:
        onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _conv_weights(seed: int = 0):
    rng = np.random.default_rng(seed)
    return {"w1": (rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32),
            "b1": np.zeros(4, np.float32)}


def custom_op(path: Path) -> Path:
    """Conv -> com.acme.Swish (an op no runtime knows) -> output."""
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Swish", ["c1"], ["y"], name="swish1", domain="com.acme")]
    return _save(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], _conv_weights(), path,
                 extra_opsets=[helper.make_opsetid("com.acme", 1)], check=False)


def two_inputs(path: Path) -> Path:
    """a[1,4] + b[1,4] -> MatMul(W) -> y[1,3]."""
    w = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    nodes = [helper.make_node("Add", ["a", "b"], ["s"], name="add"),
             helper.make_node("MatMul", ["s", "w"], ["y"], name="mm")]
    return _save(nodes, [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 4]),
                         helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 4])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], {"w": w}, path)


def log_output(path: Path) -> Path:
    """x[1,3,16,16] -> Conv -> Relu -> Log -> y: Log(0) = -Inf wherever Relu clips, in the float model."""
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Log", ["r1"], ["y"], name="log1")]
    return _save(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])], _conv_weights(), path)


def control_flow(path: Path) -> Path:
    """Conv -> If(mean > 0: Relu, else: Sigmoid) -> Conv -> y. The If branches are subgraphs."""
    rng = np.random.default_rng(3)
    inits = {**_conv_weights(), "w2": (rng.standard_normal((2, 4, 3, 3)) * 0.3).astype(np.float32),
             "b2": np.zeros(2, np.float32), "zero": np.array(0.0, np.float32)}
    then_g = helper.make_graph([helper.make_node("Relu", ["c1"], ["t_out"], name="then_relu")], "then", [],
                               [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, [1, 4, 16, 16])])
    else_g = helper.make_graph([helper.make_node("Sigmoid", ["c1"], ["e_out"], name="else_sigmoid")], "else", [],
                               [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, [1, 4, 16, 16])])
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("ReduceMean", ["c1"], ["m"], name="mean", keepdims=0),
             helper.make_node("Greater", ["m", "zero"], ["cond"], name="gt"),
             helper.make_node("If", ["cond"], ["branch"], name="if1", then_branch=then_g, else_branch=else_g),
             helper.make_node("Conv", ["branch", "w2", "b2"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    return _save(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 16, 16])], inits, path)


def dynamic_cnn(path: Path) -> Path:
    """small_cnn whose input height and width are symbolic (H, W): the policy's shape decides the image size."""
    small_cnn(path)
    model = onnx.load(str(path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    onnx.save(model, str(path))
    return path


MODELS = {"small_cnn": small_cnn, "custom_op": custom_op, "two_inputs": two_inputs, "log_output": log_output,
          "control_flow": control_flow, "dynamic_cnn": dynamic_cnn}


def op_too_new(path: Path) -> Path:
    """Conv -> Gelu, but the model declares opset 13 and Gelu exists only from opset 20."""
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Gelu", ["c1"], ["y"], name="gelu1")]
    return _save(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], _conv_weights(), path,
                 check=False)


def external_data_missing(path: Path) -> Path:
    """small_cnn saved with its weights in model.onnx.data, which is then lost."""
    small_cnn(path)
    model = onnx.load(str(path))
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=0)
    (path.parent / (path.name + ".data")).unlink()
    return path


def external_data_truncated(path: Path) -> Path:
    """small_cnn with external weights whose .data file lost its second half."""
    small_cnn(path)
    onnx.save_model(onnx.load(str(path)), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=0)
    data = path.parent / (path.name + ".data")
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    return path


MODELS.update(op_too_new=op_too_new, external_data_missing=external_data_missing,
              external_data_truncated=external_data_truncated)


def external_data_escaping(path: Path) -> Path:
    """small_cnn whose external weights are recorded as ../secret.data: a file outside the model's folder."""
    small_cnn(path)
    outside = path.parent.parent / "secret.data"
    onnx.save_model(onnx.load(str(path)), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=0)
    (path.parent / "model.onnx.data").rename(outside)
    model = onnx.load(str(path), load_external_data=False)
    for t in model.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = "../secret.data"
    onnx.save(model, str(path))
    return path


MODELS.update(external_data_escaping=external_data_escaping)


def gather_table(path: Path) -> Path:
    """idx int64[1] -> Gather from a 10x4 table -> MatMul(identity) -> y[1, 4]: an index beyond 9 fails in ORT."""
    table = np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["table", "idx"], ["g"], name="gather"),
             helper.make_node("MatMul", ["g", "wm"], ["y"], name="mm")]
    return _save(nodes, [helper.make_tensor_value_info("idx", TensorProto.INT64, [1])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                 {"table": table, "wm": np.eye(4, dtype=np.float32)}, path)


MODELS.update(gather_table=gather_table)


def quantized_cnn(path: Path, classes: int = 10) -> Path:
    """small_cnn quantized by ONNX Runtime's quantize_static (QDQ, MinMax on 4 random samples)."""
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    class _Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.samples = iter([{"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.samples, None)

    float_path = path.with_name(path.stem + ".float.onnx")
    small_cnn(float_path, classes=classes)
    quantize_static(str(float_path), str(path), _Reader())
    float_path.unlink()
    return path


def quantized_cnn_5_classes(path: Path) -> Path:
    """quantized_cnn with 5 classes: its output is [1, 5], small_cnn's [1, 10]."""
    return quantized_cnn(path, classes=5)


MODELS.update(quantized_cnn=quantized_cnn, quantized_cnn_5_classes=quantized_cnn_5_classes)


def no_outputs(path: Path) -> Path:
    """x -> Relu -> r, and the graph declares no outputs (nothing to run)."""
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu1")]
    return _save(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])], [], {}, path,
                 check=False)


def graph_cycle(path: Path) -> Path:
    """a = x + b, b = Relu(a): a cycle, which ONNX forbids and ONNX Runtime refuses to load."""
    nodes = [helper.make_node("Add", ["x", "b"], ["a"], name="add1"),
             helper.make_node("Relu", ["a"], ["b"], name="relu1"),
             helper.make_node("Relu", ["a"], ["y"], name="relu2")]
    return _save(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 16, 16])], {}, path, check=False)


MODELS.update(no_outputs=no_outputs, graph_cycle=graph_cycle)
