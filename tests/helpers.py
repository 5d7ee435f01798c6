"""Small real ONNX models and data sets for tests, built with onnx.helper.

The models are tiny so tests run in seconds, but everything about them is
real: ONNX Runtime runs them, quantizes them and measures them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper, numpy_helper

TESTS = Path(__file__).resolve().parent  # tests/: fixtures shared by every stage's tests
REPO = TESTS.parent


def _save(graph: onnx.GraphProto, path: Path, opset: int = 13, check: bool = True) -> Path:
    """Save a test graph as a model ONNX Runtime loads (IR version 8), checked by onnx unless told not to."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    if check:
        onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def small_cnn(path: Path, seed: int = 0, classes: int = 10, opset: int = 13) -> Path:
    """x[1,3,16,16] -> Conv(8) -> Relu -> Conv(8) -> Relu -> GlobalAveragePool -> Flatten -> Gemm -> logits[1,10]."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32)
    b1 = (rng.standard_normal(8) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((8, 8, 3, 3)) * 0.2).astype(np.float32)
    b2 = (rng.standard_normal(8) * 0.1).astype(np.float32)
    wf = (rng.standard_normal((classes, 8)) * 0.5).astype(np.float32)
    bf = (rng.standard_normal(classes) * 0.1).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "wf", "bf"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "small_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes])],
        initializer=[numpy_helper.from_array(a, n) for a, n in
                     [(w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"), (wf, "wf"), (bf, "bf")]],
    )
    return _save(graph, path, opset)


def residual_cnn(path: Path, seed: int = 0) -> Path:
    """A skip connection, a constant shared by two nodes, and an output produced early.

    x -> conv1 -> relu1 -> conv2 -> relu2 -> add(relu2, relu1) -> mul(c) -> conv3 -> add(c) -> y
                     \-> GlobalAveragePool -> early
    """
    rng = np.random.default_rng(seed)
    arrays = {"w1": rng.standard_normal((8, 3, 3, 3)) * 0.3, "b1": rng.standard_normal(8) * 0.1,
              "w2": rng.standard_normal((8, 8, 3, 3)) * 0.2, "b2": rng.standard_normal(8) * 0.1,
              "w3": rng.standard_normal((4, 8, 3, 3)) * 0.2, "b3": rng.standard_normal(4) * 0.1,
              "c": np.array(0.75)}
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("GlobalAveragePool", ["r1"], ["early"], name="gap"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Add", ["r2", "r1"], ["s"], name="skip"),
        helper.make_node("Mul", ["s", "c"], ["m"], name="scale"),
        helper.make_node("Conv", ["m", "w3", "b3"], ["c3"], name="conv3", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c3", "c"], ["y"], name="shift"),
    ]
    graph = helper.make_graph(
        nodes, "residual_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16]),
         helper.make_tensor_value_info("early", TensorProto.FLOAT, [1, 8, 1, 1])],
        initializer=[numpy_helper.from_array(a.astype(np.float32), n) for n, a in arrays.items()],
    )
    return _save(graph, path)


def weight_heavy_mlp(path: Path, seed: int = 0, width: int = 256, out: int = 64) -> Path:
    """x[1,width] -> MatMul(width x width) -> Relu -> MatMul(width x out) -> y[1,out]: nearly all bytes are weights.

    No biases and no Gemm, so every scheme (dynamic quantization only takes MatMul) stores all
    width*width + width*out parameters in its own type.
    """
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
    w2 = (rng.standard_normal((width, out)) / np.sqrt(width)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, out])],
                              initializer=[numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return _save(graph, path, check=False)


def cnn_with_float_ops(path: Path, seed: int = 0) -> Path:
    """x[1,3,8,8] -> Conv -> HardSigmoid 'gate' -> Erf 'soft' -> Conv -> y: two ops ORT's quantizer has no kernel for."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32)
    w2 = (rng.standard_normal((4, 4, 3, 3)) * 0.3).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("HardSigmoid", ["c1"], ["g"], name="gate"),
             helper.make_node("Erf", ["g"], ["e"], name="soft"),
             helper.make_node("Conv", ["e", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "cnn_float_ops", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
                              initializer=[numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return _save(graph, path, check=False)


def write_npy_samples(folder: Path, n: int, shape=(1, 3, 16, 16), scale: float = 1.0, seed: int = 1) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        np.save(folder / f"{i}.npy", (rng.standard_normal(shape) * scale).astype(np.float32))
    return folder


def json_objects(node):
    """Every dict inside a parsed JSON document (a schema's nodes), depth first."""
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from json_objects(v)
    elif isinstance(node, list):
        for v in node:
            yield from json_objects(v)


def write_policy(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def basic_policy(tmp: Path, **overrides) -> Path:
    """A complete policy for small_cnn with npy data, written to tmp/qcheck.yaml."""
    small_cnn(tmp / "model.onnx")
    write_npy_samples(tmp / "calib", 8)
    doc = {
        "model": "model.onnx",
        "data": {"calibration": "calib"},
        "require": ["model.cosine >= 0.9"],
        "report": {"out": "out", "formats": ["html"]},
    }
    doc.update(overrides)
    return write_policy(tmp / "qcheck.yaml", doc)


def outlier_head_cnn(path: Path, factor: float = 1000.0, seed: int = 0) -> Path:
    """small_cnn whose last node, `fc`, writes one wide column into its output, as a detector head joins
    box pixels and class scores in one tensor: logits[:, 0] is `factor` times larger than logits[:, 1:].

    One per-tensor scale then spends the uint8 grid on column 0 and rounds the narrow columns away; only
    `fc` (whose output nothing else reads) decides how `logits` is quantized.
    """
    small_cnn(path, seed=seed)
    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    for name in ("wf", "bf"):
        a = numpy_helper.to_array(inits[name]).copy()
        a[0] *= factor
        inits[name].CopyFrom(numpy_helper.from_array(a, name))
    onnx.save(model, str(path))
    return path


def outlier_channel_conv(path: Path, outlier: float = 20.0, seed: int = 0) -> Path:
    """x[1,4,8,8] -> Conv(w[8,4,3,3], no bias) -> y. Every output channel's weights span exactly [-0.5, 0.5],
    except channel 5, which holds one weight `outlier`: its range is outlier + 0.5, the others' 1.0."""
    rng = np.random.default_rng(seed)
    w = rng.uniform(-0.5, 0.5, (8, 4, 3, 3)).astype(np.float32)
    for c in range(8):
        w[c, 0, 0, 0], w[c, 0, 0, 1] = -0.5, 0.5
    w[5, 1, 1, 1] = outlier
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])], "outlier_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])],
        initializer=[numpy_helper.from_array(w, "w")])
    return _save(graph, path)


def mixed_concat(path: Path, factor: float = 320.0) -> Path:
    """x[1,2,8,8] -> Mul(x, factor) = big; Concat(x, big) on axis 1 -> out[1,4,8,8]: the detector pattern of
    class scores (range of x) and box pixels (factor times wider) joined in one output."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "k"], ["big"], name="mul"),
         helper.make_node("Concat", ["x", "big"], ["out"], name="concat", axis=1)], "mixed_concat",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 8, 8])],
        initializer=[numpy_helper.from_array(np.array(factor, dtype=np.float32), "k")])
    return _save(graph, path)


def passthrough_model(path: Path, shape: list[int], out_name: str = "y") -> Path:
    """x -> MatMul(identity) -> y: a model whose output is its input, quantized once at the input and once at
    the output, so the quantized output is exactly the input rounded to the calibrated grid."""
    eye = np.eye(shape[-1], dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "eye"], [out_name], name="matmul")], "passthrough",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, shape)],
        initializer=[numpy_helper.from_array(eye, "eye")],
    )
    return _save(graph, path)


def write_arrays(folder: Path, arrays: list[np.ndarray]) -> Path:
    """Samples 0.npy, 1.npy ... from given arrays (float32)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(arrays):
        np.save(folder / f"{i}.npy", np.asarray(a, dtype=np.float32))
    return folder


def outlier_first_mlp(path: Path, factor: float = 1000.0, seed: int = 0) -> Path:
    """x[1,16] -> Gemm `head` -> logits[1,10], and x -> MatMul `m1` -> Relu `relu` -> MatMul `m2` -> feat[1,8].

    `head` is the first node in topological order, and the bad one: as in `outlier_head_cnn`, its row 0 (weights
    and bias) is `factor` times larger, so logits[:, 0] spends the one per-tensor uint8 grid of `logits` and the
    narrow columns round away. Nothing reads `logits`, so keeping `head` in float leaves it unquantized.
    """
    rng = np.random.default_rng(seed)
    wh = (rng.standard_normal((10, 16)) * 0.5).astype(np.float32)
    bh = (rng.standard_normal(10) * 0.1).astype(np.float32)
    wh[0] *= factor
    bh[0] *= factor
    w1 = (rng.standard_normal((16, 16)) * 0.3).astype(np.float32)
    w2 = (rng.standard_normal((16, 8)) * 0.3).astype(np.float32)
    nodes = [
        helper.make_node("Gemm", ["x", "wh", "bh"], ["logits"], name="head", transB=1),
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="m1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["feat"], name="m2"),
    ]
    graph = helper.make_graph(
        nodes, "outlier_first_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10]),
         helper.make_tensor_value_info("feat", TensorProto.FLOAT, [1, 8])],
        initializer=[numpy_helper.from_array(a, n) for a, n in [(wh, "wh"), (bh, "bh"), (w1, "w1"), (w2, "w2")]])
    return _save(graph, path)


def gain_conv(path: Path, channels: int = 256, gain: float = 1000.0) -> Path:
    """x[1,C,1,1] -> 1x1 Conv `conv` (identity weights, except w[0,0] = gain; no bias) -> y[1,C,1,1].

    y[c] = x[c] for c >= 1 and y[0] = gain * x[0]. Per-channel int8 weights are exact (each output channel's
    one non-zero weight is its own max: 127 steps). When x[0] is 0 in every sample but one, y[0] = gain is a
    rare outlier in `y`'s calibration data: minmax stretches y's grid to [0, gain], one step gain/255.
    """
    w = np.zeros((channels, channels, 1, 1), np.float32)
    for c in range(channels):
        w[c, c, 0, 0] = 1.0
    w[0, 0, 0, 0] = gain
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], "gain_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, 1, 1])],
        initializer=[numpy_helper.from_array(w, "w")])
    return _save(graph, path)


def two_head_concat(path: Path, factor: float = 300.0, seed: int = 0) -> Path:
    """A detector head in miniature: two heads each join class scores (Sigmoid, 0-1) and box pixels (0-factor)
    in a Concat, both joined again and reshaped into out[1, 4, 8] (rows: scores 1, boxes 1, scores 2, boxes 2).
    The scores end up on the boxes' grid at three Concats; fixing one of them leaves the others crushing them."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], [numpy_helper.from_array(np.array(factor, np.float32), "k"),
                        numpy_helper.from_array(np.array([1, 4, 8], np.int64), "shape")]
    for h in (1, 2):
        for part in ("s", "b"):
            w = f"w_{part}{h}"
            inits.append(numpy_helper.from_array(rng.normal(size=(4, 8)).astype(np.float32), w))
            nodes += [helper.make_node("MatMul", ["x", w], [f"{part}{h}_logits"], name=f"mm_{part}{h}"),
                      helper.make_node("Sigmoid", [f"{part}{h}_logits"], [f"{part}{h}_sig"], name=f"sig_{part}{h}")]
        nodes += [helper.make_node("Mul", [f"b{h}_sig", "k"], [f"box{h}"], name=f"pixels{h}"),
                  helper.make_node("Concat", [f"s{h}_sig", f"box{h}"], [f"cat{h}"], name=f"concat{h}", axis=1)]
    nodes += [helper.make_node("Concat", ["cat1", "cat2"], ["cat"], name="concat", axis=1),
              helper.make_node("Reshape", ["cat", "shape"], ["out"], name="reshape")]
    graph = helper.make_graph(nodes, "two_head_concat", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 8])], initializer=inits)
    return _save(graph, path)


def matmul_stack(path: Path, layers: int = 8, width: int = 32, seed: int = 0, rough: int | None = None,
                 outlier: float = 100.0) -> Path:
    """x[1, width] -> `layers` MatMuls with signed Hadamard weights (exact on the int8 weight grid) -> y: every
    layer adds a little int8 activation rounding error, none dominates, so no single node (or tensor) fixed in
    int16 or float meets a tight requirement, while int16 activations everywhere (scheme a16w8) do.

    `rough`: layer `mm<rough>` gets a row of 100s its input never reads (the layer before writes 0 there), so its
    weights' int8 grid is 100/127 wide and its other weights round to 0 or one step: that layer needs float
    weights whatever the activations get (a16w8 alone misses; a16w8 plus that node in float passes)."""
    rng = np.random.default_rng(seed)
    h = np.ones((1, 1))
    while h.shape[0] < width:
        h = np.block([[h, h], [h, -h]])
    nodes, inits, prev = [], [], "x"
    for i in range(layers):
        q = h * rng.choice([-1.0, 1.0], size=width) / np.sqrt(width)
        if rough is not None and i == rough - 1:
            q[:, 0] = 0.0  # the rough layer's input 0 is always 0
        if rough is not None and i == rough:
            q[0, :] = outlier
        inits.append(numpy_helper.from_array(q.astype(np.float32), f"w{i}"))
        out = "y" if i == layers - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [out], name=f"mm{i}"))
        prev = out
    graph = helper.make_graph(nodes, "matmul_stack", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])], initializer=inits)
    return _save(graph, path)


def coarse_weight_matmul(path: Path, width: int = 64, diagonal: float = 4.0, seed: int = 0) -> Path:
    """x[1, width] -> MatMul -> y with a weight whose every column holds one large value (`diagonal`) among small
    ones (|w| < 0.05): the column's int8 step (diagonal / 127) rounds every small weight by up to half a step, and
    the 63 rounding errors add up in each output; with int16 weights they vanish."""
    rng = np.random.default_rng(seed)
    w = rng.uniform(-0.05, 0.05, size=(width, width)) + np.eye(width) * diagonal
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "coarse_weight_matmul",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])],
                              initializer=[numpy_helper.from_array(w.astype(np.float32), "w")])
    return _save(graph, path)


def one_matmul(path: Path, width: int = 16, seed: int = 0) -> Path:
    """x[1, width] -> MatMul -> y: what clips when evaluation inputs reach beyond the calibrated range."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array((rng.normal(size=(width, width)) / np.sqrt(width)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "one_matmul",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])], initializer=[w])
    return _save(graph, path)


def byte_classifier(path: Path, seed: int = 0, vocab: int = 64, length: int = 8, dim: int = 16, hidden: int = 32,
                    classes: int = 4, row_bias: bool = True, named: bool = True) -> Path:
    """ids int32[1, length] -> Gather embedding -> LayerNorm -> MatMul+Add -> ReduceMean -> MatMul+Add -> Softmax.

    With `row_bias` the classifier's Add adds a [1, classes] bias, as exporters often write it; ORT's
    pre-processing fuses that MatMul+Add into a Gemm with a [1, classes] bias. `named=False` leaves the
    nodes unnamed, as some exporters do.
    """
    rng = np.random.default_rng(seed)
    arrays = {
        "emb": rng.standard_normal((vocab, dim)), "ln_g": 1 + 0.1 * rng.standard_normal(dim), "ln_b": np.zeros(dim),
        "w1": rng.standard_normal((dim, hidden)) * 0.3, "b1": rng.standard_normal(hidden) * 0.1,
        "w2": rng.standard_normal((hidden, classes)) * 0.3,
        "b2": rng.standard_normal((1, classes) if row_bias else classes) * 0.1,
    }
    nodes = [
        helper.make_node("Gather", ["emb", "ids"], ["e"], name="embed"),
        helper.make_node("LayerNormalization", ["e", "ln_g", "ln_b"], ["n"], name="norm", axis=-1),
        helper.make_node("MatMul", ["n", "w1"], ["m1"], name="proj"),
        helper.make_node("Add", ["m1", "b1"], ["h"], name="proj_bias"),
        helper.make_node("ReduceMean", ["h"], ["pooled"], name="pool", axes=[1], keepdims=0),
        helper.make_node("MatMul", ["pooled", "w2"], ["m2"], name="cls"),
        helper.make_node("Add", ["m2", "b2"], ["logits"], name="cls_bias"),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=-1),
    ]
    for node in nodes if not named else []:
        node.name = ""
    graph = helper.make_graph(
        nodes, "byte_classifier", [helper.make_tensor_value_info("ids", TensorProto.INT32, [1, length])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, classes])],
        initializer=[numpy_helper.from_array(a.astype(np.float32), n) for n, a in arrays.items()])
    return _save(graph, path, opset=17)


def write_token_samples(folder: Path, n: int, length: int = 8, vocab: int = 64, seed: int = 1) -> Path:
    """n samples of token ids, int32 [1, length]."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        np.save(folder / f"{i}.npy", rng.integers(0, vocab, (1, length)).astype(np.int32))
    return folder


def matmul_screening_setup(tmp: Path, require: str) -> tuple:
    """`matmul_stack` with 16 calibration and 20 evaluation samples (three screening batches of up to 8), its policy
    requiring `require` of `y_err` (the largest error of y), prepared and calibrated: what the screening tests share.
    (folder, policy, prepared model, float model, ranges, evaluation samples)."""
    from qcheck.data.readers import open_data
    from qcheck.model.prepare import load_onnx, prepare_model
    from qcheck.policy.loader import load_policy
    from qcheck.policy.spec import Preprocess
    from qcheck.quantize.calibrate import calibrate

    matmul_stack(tmp / "model.onnx")
    write_npy_samples(tmp / "calib", 16, shape=(1, 32))
    write_npy_samples(tmp / "eval", 20, shape=(1, 32), seed=7, scale=0.5)
    policy = load_policy(write_policy(tmp / "qcheck.yaml", {
        "model": "model.onnx", "data": {"calibration": "calib", "evaluation": "eval"},
        "metrics": {"y_err": {"output": "y", "metric": "max_abs"}}, "require": [require]}))
    src = tmp / "model.onnx"
    pm = prepare_model(load_onnx(src), src, {}, tmp)
    calib = open_data(policy.data.calibration, pm.inputs, Preprocess())
    evaluation = open_data(policy.data.evaluation, pm.inputs, Preprocess())
    ranges = calibrate(pm.path, calib, policy.quantization)
    return tmp, policy, pm, onnx.load(str(pm.path)), ranges, [evaluation[i] for i in range(len(evaluation))]
