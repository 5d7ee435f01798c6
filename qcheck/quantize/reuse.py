"""What ONNX Runtime's QDQ quantizer computes the same way for every candidate of a search, computed once.

A search builds dozens of candidates of one float model that differ in a few nodes or tensors. For each one
ORT's Python quantizer redoes work whose result does not depend on what the candidate changes:

- every weight's scales and zero points: a Python call per output channel (`_calc_initializer_quant_params`);
- every weight's quantized copy (`quantize_onnx_initializer`, again per channel);
- a scan of every input of every node for each tensor it rewires (`ONNXModel.replace_input_of_all_nodes`).

`BuildReuse` keeps the first two, keyed by everything they are computed from (the tensor, its role and axis,
its override entry, the quantizer's types and options; the arguments of the call), for one float model; the
scan skips, in C, the nodes that do not read the tensor. ORT still decides the whole model: which nodes and
tensors are quantized, how they are wired, bias and activation parameters. The model it writes is the same,
byte for byte, with or without reuse (tests/quantize/test_reuse.py builds each kind of change both ways).

Only the search's candidates use it (`calibrate.build_quantized(reuse=...)`); `apply` and the main run's
model are built by ORT's quantizer as it is.
"""

from __future__ import annotations

import copy
import threading

import numpy as np

_ACTIVE = threading.local()  # the BuildReuse of the build running on this thread (the ORT patch reads it)
_MISSING = object()  # a tensor ORT gives no initializer parameters (an activation)


class BuildReuse:
    """Weight parameters and quantized weights of one float model, kept across the builds of a search.

    `model_key` names the float model (path, mtime, size); a build from another model clears what is kept.
    Threads may build at once: a value is computed twice at worst, never mixed."""

    def __init__(self):
        self.model_key: tuple | None = None
        self.params: dict[tuple, object] = {}  # (tensor, role, settings, override) -> QuantizationParams | _MISSING
        self.weights: dict[tuple, object] = {}  # the arguments of quantize_onnx_initializer -> its TensorProto
        self.hits = self.misses = 0  # for tests and the bench: reuse actually happened
        self._lock = threading.Lock()

    def bind(self, model_key: tuple) -> None:
        with self._lock:
            if model_key != self.model_key:
                self.model_key, self.params, self.weights = model_key, {}, {}

    def __enter__(self):
        _ACTIVE.reuse = self
        return self

    def __exit__(self, *exc):
        _ACTIVE.reuse = None


def reusing_quantizer_class():
    """ORT's QDQQuantizer with the weights' parameters taken from the active BuildReuse (made once)."""
    global _CLASS
    if _CLASS is None:
        from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

        _install_weight_patch()

        class ReusingQDQQuantizer(QDQQuantizer):
            def __init__(self, *args, reuse: BuildReuse, **kwargs):
                super().__init__(*args, **kwargs)
                self.reuse = reuse
                _fast_rewiring(self.model)

            def _calc_initializer_quant_params(self):
                return _initializer_params(self, super()._calc_initializer_quant_params)

        _CLASS = ReusingQDQQuantizer
    return _CLASS


_CLASS = None


def _settings(q) -> tuple:
    """The quantizer-wide options `_calc_initializer_quant_params` reads (besides each tensor's own entry)."""
    return (q.weight_qType, q.activation_qType, q.is_activation_symmetric, q.reduce_range,
            getattr(q, "block_size", 0), getattr(q, "min_real_range", None),
            tuple(q.is_weight_symmetric(t) for t in _INTEGER_TYPES))


_INTEGER_TYPES = (2, 3, 4, 5)  # onnx.TensorProto UINT8, INT8, UINT16, INT16: the types a recipe names


def _initializer_params(q, compute) -> dict:
    """`_calc_initializer_quant_params` with each tensor's result reused when its inputs are the same: ORT computes
    only the tensors not seen yet (by restricting `tensors_to_quantize` to them while it runs); the dict comes
    back in ORT's order, with copies (ORT edits a weight's scale for its bias afterwards)."""
    reuse: BuildReuse = q.reuse
    settings = _settings(q)
    keys, todo = {}, {}
    for name, info in q.tensors_to_quantize.items():
        entry = q.tensor_quant_overrides.get(name, None)
        keys[name] = (name, info.tensor_type, info.axis, info.data_type, info.is_shared, settings, _hashable(entry))
        if keys[name] not in reuse.params:
            todo[name] = info
    if todo:
        every = q.tensors_to_quantize
        q.tensors_to_quantize = todo
        try:
            computed = compute()
        finally:
            q.tensors_to_quantize = every
        for name in todo:
            reuse.params[keys[name]] = computed.get(name, _MISSING)
    reuse.hits += len(keys) - len(todo)
    reuse.misses += len(todo)
    out = {}
    for name in keys:
        value = reuse.params[keys[name]]
        if value is not _MISSING:
            out[name] = copy.deepcopy(value)
    return out


def _install_weight_patch() -> None:
    """Route `qdq_quantizer.quantize_onnx_initializer` through the active BuildReuse (a pure function of its
    arguments and the weight's values, fixed for one float model). With no BuildReuse active on the thread (every
    build but a search's candidates) it is ORT's function, called as it is."""
    from onnxruntime.quantization import qdq_quantizer as module

    original = module.quantize_onnx_initializer
    if getattr(original, "qcheck_reuse", False):
        return

    def quantize_onnx_initializer(weight, *args, **kwargs):
        reuse = getattr(_ACTIVE, "reuse", None)
        if reuse is None:
            return original(weight, *args, **kwargs)
        key = (weight.name, _hashable(args), _hashable(kwargs))
        made = reuse.weights.get(key)
        if made is None:
            made = reuse.weights[key] = original(weight, *args, **kwargs)
        out = type(made)()
        out.CopyFrom(made)  # ORT appends it to the model: a copy, so the kept one stays as ORT made it
        return out

    quantize_onnx_initializer.qcheck_reuse = True
    module.quantize_onnx_initializer = quantize_onnx_initializer


def _fast_rewiring(onnx_model) -> None:
    """ORT's `replace_input_of_all_nodes` calls a Python function for every input of every node; the same edit,
    with the nodes that do not read the tensor skipped by protobuf's own membership test."""

    def replace_input_of_all_nodes(old_input_name: str, new_input_name: str) -> None:
        assert isinstance(old_input_name, str) and isinstance(new_input_name, str)
        for node in onnx_model.model.graph.node:
            if old_input_name in node.input:
                for j, name in enumerate(node.input):
                    if name == old_input_name:
                        node.input[j] = new_input_name

    onnx_model.replace_input_of_all_nodes = replace_input_of_all_nodes


def _hashable(value):
    """A dict key for the arguments ORT computes from: arrays by dtype, shape and bytes; containers recursively."""
    if isinstance(value, np.ndarray) or isinstance(value, np.generic):
        a = np.asarray(value)
        return ("array", a.dtype.str, a.shape, a.tobytes())
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    if hasattr(value, "tensor_type"):  # ORT's QuantType
        return ("quant_type", value.tensor_type)
    return value
