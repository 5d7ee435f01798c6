"""What layer metrics and the graph view cost, on real model shapes.

    python bench/bench_layer_metrics.py                       # PP-OCRv4 detector at 320x320, one sample
    python bench/bench_layer_metrics.py --model m.onnx --size 640

Prints figures, asserts nothing (the machine is shared and noisy):

1. layer metrics: for each example metric, the time per evaluation sample to
   compute it on every float activation of the model (shapes from ONNX shape
   inference; values synthetic, quantized to a uint8 grid over their range),
   next to the built-in statistics (ErrorAccumulator.update) on the same arrays.
   A run pays this once per sample, in the measurement pass; no model runs again.
2. the graph view: layout and drawing time for the model, and for a synthetic
   model of about 2,000 nodes (the model's compute nodes repeated), with the
   number of PDF pages or regions chosen.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import onnx
from threadpoolctl import threadpool_limits

from qcheck.measure.error_stats import ErrorAccumulator
from qcheck.measure.layer_metrics import LayerMetrics
from qcheck.model.graph import GraphIndex
from qcheck.policy.array_expr import ArrayExpression
from qcheck.policy.spec import LayerMetricSpec
from qcheck.quantize.qdq import QuantizedTensor
from qcheck.report.graph_view import HIDDEN_OPS, graph_view

threadpool_limits(1, user_api="blas")  # as the qcheck command does (see qcheck.cli.main)

METRICS = {
    "mean_abs_steps": ("mean(abs(diff)) / scale", "samples"),
    "p999_err": ("percentile(abs(diff), 99.9) / scale", "samples"),
    "used_steps": ("count_unique(round(quant / scale))", "elements"),
    "sat_hi": ("mean(float > (qmax - zero_point) * scale)", "samples"),
    "rel_err": ("sqrt(sum(diff ** 2) / sum(float ** 2))", "elements"),
}
DEFAULT_MODEL = Path("/work/models/ch_PP-OCRv4_det_infer.onnx")


def activation_shapes(model: onnx.ModelProto, size: int) -> dict[str, list[int]]:
    inp = model.graph.input[0].type.tensor_type.shape.dim
    for d, v in zip(inp, [1, 3, size, size]):
        d.dim_value = v
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for vi in inferred.graph.value_info:
        t = vi.type.tensor_type
        dims = [d.dim_value for d in t.shape.dim]
        if t.elem_type == onnx.TensorProto.FLOAT and dims and all(dims):
            shapes[vi.name] = dims
    return shapes


def bench_metrics(shapes: dict[str, list[int]]) -> None:
    rng = np.random.default_rng(0)
    arrays = {}
    for name, shape in shapes.items():
        f = rng.standard_normal(shape).astype(np.float32)
        lo, hi = min(float(f.min()), 0.0), max(float(f.max()), 0.0)
        scale = (hi - lo) / 255 or 1.0
        zp = int(round(-lo / scale))
        t = QuantizedTensor(name, "activation", "uint8", np.array(scale, np.float32), np.array(zp, np.uint8))
        q = t.dequantize(np.clip(np.rint(f / scale) + zp, 0, 255).astype(np.uint8))
        arrays[name] = (t, f, q)
    elements = sum(f.size for _, f, _ in arrays.values())
    print(f"{len(arrays)} float activations, {elements / 1e6:.1f} M values per sample; load {os.getloadavg()}")
    start = time.perf_counter()
    for t, f, q in arrays.values():
        ErrorAccumulator(scale=float(t.scale)).update(f, q)
    base = time.perf_counter() - start
    print(f"{'built-in statistics (ErrorAccumulator)':<44} {1000 * base:9.1f} ms/sample")
    for name, (text, over) in METRICS.items():
        spec = LayerMetricSpec(name, ArrayExpression(text, over=over), over=over)
        lm = LayerMetrics({name: spec}, Path("."))
        for t, f, q in arrays.values():
            lm.update("local", t, f, q, "0")
        print(f"{name + ' (' + over + ')':<44} {1000 * lm.seconds[name]:9.1f} ms/sample   {text}")


def bench_graph(model: onnx.ModelProto) -> None:
    outline = GraphIndex(model).outline()
    compute = [n for n in outline if n["op_type"] not in HIDDEN_OPS]
    copies = max(2000 // max(len(compute), 1), 1)
    big = []
    inputs = {i.name for i in model.graph.input}
    for k in range(copies):  # chained copies: copy k reads copy k-1's last output instead of the model input
        rename = {t: f"{k}/{t}" for n in compute for t in n["outputs"]}
        for n in compute:
            ins = [rename.get(t, f"{k - 1}/{compute[-1]['outputs'][0]}" if k and t in inputs else t)
                   for t in n["inputs"]]
            big.append({"name": f"{k}/{n['name']}", "op_type": n["op_type"], "inputs": ins,
                        "outputs": [rename[t] for t in n["outputs"]]})
    for label, nodes in (("the model", outline), (f"{len(big)} nodes (x{copies})", big)):
        results = {"graph": nodes, "tensors": [], "findings": [], "layer_metrics": [], "policy": {"document": {}},
                   "quantization": {"float_nodes": [], "recipe": {}}, "lock": {"recipe": {}}}
        start = time.perf_counter()
        view = graph_view(results)
        took = time.perf_counter() - start
        print(f"graph view of {label}: {view['nodes']} nodes drawn, {view['layers']} layers, "
              f"{len(view['svg']) / 1e6:.2f} MB of SVG, {len(view['pages'])} PDF page(s)"
              f"{' (regions: ' + view['pages_note'][:60] + '...)' if view['pages_note'] else ''}; {took:.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--size", type=int, default=320)
    args = ap.parse_args()
    model = onnx.load(str(args.model))
    bench_metrics(activation_shapes(onnx.load(str(args.model)), args.size))
    bench_graph(model)


if __name__ == "__main__":
    main()
