"""What ONNX Runtime's QDQ quantizer computes the same way for every candidate of a search, computed once.

A search builds dozens of candidates of one float model that differ in a few nodes or tensors. For each one
ORT's Python quantizer redoes work whose result does not depend on what the candidate changes:

- every weight's scales and zero points: a Python call per output channel (`_calc_initializer_quant_params`);
- every weight's quantized copy (`quantize_onnx_initializer`, again per channel);
- a scan of every input of every node for each tensor it rewires (`ONNXModel.replace_input_of_all_nodes`);
- a scan of every initializer for each one it looks up by name (`find_by_name`, `ONNXModel.get_initializer`),
  thousands of times per build, and a check of every initializer each time it adds some.

`BuildReuse` keeps the first two, keyed by everything they are computed from (the tensor, its role and axis,
its override entry, the quantizer's types and options; the arguments of the call; the opsets the model was
converted to), for one float model; the
rewiring skips, in C, the nodes that do not read the tensor; lookups go through an index of the initializer
list (`_InitializerIndex`). ORT still decides the whole model: which nodes and tensors are quantized, how they
are wired, bias and activation parameters. The model it writes is the same, byte for byte, with or without
reuse (tests/search/test_confirm_reuse.py builds each kind of change both ways).

Only the search's candidates use it (`calibrate.build_quantized(reuse=...)`); `apply` and the main run's
model are built by ORT's quantizer as it is.
"""

from __future__ import annotations

import copy
import threading

import numpy as np

_ACTIVE = threading.local()  # the build running on this thread: .reuse, .index (the ORT patches read them)
_MISSING = object()  # a tensor ORT gives no initializer parameters (an activation)


class BuildReuse:
    """Weight parameters and quantized weights of one float model, kept across the builds of a search.

    `model_key` names the float model (path, mtime, size); a build from another model clears what is kept.
    `max_bytes`: the quantized weights kept at most (beyond it, new ones are computed each time, as ORT does; the
    parameters are small and always kept). Threads may build at once: a value is computed twice at worst, never
    mixed."""

    def __init__(self, max_bytes: int | None = None):
        self.model_key: tuple | None = None
        self.params: dict[tuple, object] = {}  # (tensor, role, settings, override) -> QuantizationParams | _MISSING
        self.weights: dict[tuple, object] = {}  # the arguments of quantize_onnx_initializer -> its TensorProto
        self.max_bytes, self.kept_bytes = max_bytes, 0
        self.hits = self.misses = 0  # for tests and the bench: reuse actually happened
        self._lock = threading.Lock()

    def bind(self, model_key: tuple) -> None:
        with self._lock:
            if model_key != self.model_key:
                self.model_key, self.params, self.weights, self.kept_bytes = model_key, {}, {}, 0

    def keep_weight(self, key: tuple, tensor) -> None:
        size = tensor.ByteSize()
        with self._lock:
            if self.max_bytes is None or self.kept_bytes + size <= self.max_bytes:
                self.weights[key] = tensor
                self.kept_bytes += size


def reusing_quantizer_class():
    """ORT's QDQQuantizer with the weights' parameters taken from the active BuildReuse (made once); None when the
    installed ONNX Runtime lacks the functions this relies on (its plain quantizer builds then)."""
    global _CLASS
    if _CLASS is None:
        from onnxruntime.quantization import qdq_quantizer, quant_utils

        if not all(hasattr(m, a) for m, a in ((qdq_quantizer, "quantize_onnx_initializer"), (quant_utils, "find_by_name"),
                                               (qdq_quantizer.QDQQuantizer, "_calc_initializer_quant_params"))):
            return None
        _install_patches()

        class ReusingQDQQuantizer(qdq_quantizer.QDQQuantizer):
            def __init__(self, *args, reuse: BuildReuse, **kwargs):
                super().__init__(*args, **kwargs)
                self.reuse = reuse
                _fast_rewiring(self.model)

            def quantize_model(self):
                index = _InitializerIndex(self.model)
                self.model.get_initializer = index.find
                _ACTIVE.reuse, _ACTIVE.index, _ACTIVE.opsets = self.reuse, index, _opsets(self)
                try:
                    return super().quantize_model()
                finally:
                    _ACTIVE.reuse = _ACTIVE.index = _ACTIVE.opsets = None

            def _calc_initializer_quant_params(self):
                return _initializer_params(self, super()._calc_initializer_quant_params)

        _CLASS = ReusingQDQQuantizer
    return _CLASS


_CLASS = None


def _opsets(q) -> tuple:
    """The model's opsets as the quantizer starts: the float model, converted to opset 21 when a recipe has 16-bit
    types (`update_opset_version`). With the float file, they decide the initializers ORT reads by name."""
    return tuple(sorted((o.domain, o.version) for o in q.model.model.opset_import))


def _settings(q) -> tuple:
    """The quantizer-wide options `_calc_initializer_quant_params` reads (besides each tensor's own entry)."""
    return (_opsets(q), q.weight_qType, q.activation_qType, q.is_activation_symmetric, q.reduce_range,
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
        keys[name] = (name, info.tensor_type, info.axis, getattr(info, "data_type", None), info.is_shared, settings,
                      _hashable(entry))
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


def _install_patches() -> None:
    """Route ORT's `quantize_onnx_initializer` (in qdq_quantizer) and `find_by_name` (in every quantization module
    that imported it) through the build running on this thread. With none (every build but a search's
    candidates), or for another list than the model's initializers, they are ORT's functions, called as they are."""
    import sys

    from onnxruntime.quantization import qdq_quantizer, quant_utils

    original = qdq_quantizer.quantize_onnx_initializer
    if getattr(original, "qcheck_reuse", False):
        return

    def quantize_onnx_initializer(weight, *args, **kwargs):
        reuse = getattr(_ACTIVE, "reuse", None)
        if reuse is None:
            return original(weight, *args, **kwargs)
        key = (_ACTIVE.opsets, weight.name, _hashable(args), _hashable(kwargs))
        made = reuse.weights.get(key)
        if made is None:
            made = original(weight, *args, **kwargs)
            reuse.keep_weight(key, made)
        out = type(made)()
        out.CopyFrom(made)  # ORT appends it to the model: a copy, so the kept one stays as ORT made it
        return out

    find = quant_utils.find_by_name

    def find_by_name(item_name, item_list):
        index = getattr(_ACTIVE, "index", None)
        if index is not None and item_list is index.container():
            return index.find(item_name)
        return find(item_name, item_list)

    quantize_onnx_initializer.qcheck_reuse = True
    qdq_quantizer.quantize_onnx_initializer = quantize_onnx_initializer
    for name, module in list(sys.modules.items()):
        if name.startswith("onnxruntime.quantization") and getattr(module, "find_by_name", None) is find:
            module.find_by_name = find_by_name


class _Mirror:
    """The elements of one of the model's protobuf lists (its nodes, its initializers) as a Python list, brought up
    to date before each use. protobuf gives each element one Python object for as long as it is in the list
    (removing another one does not change it), so when the object that was last at the previous update is still
    at that place nothing before it went, and only what was appended since is added; otherwise (an element
    removed, the list cleared or replaced) the list is read again."""

    def __init__(self, get_container):
        self.get_container = get_container
        self.container, self.items = None, []

    def update(self) -> int:
        """Bring the list up to date; the index from which its items are new (0: read again)."""
        c = self.get_container()
        k = len(self.items)
        if c is not self.container or (k and (len(c) < k or c[k - 1] is not self.items[-1])):
            self.container, self.items, k = c, [], 0
        self.items.extend(c[i] for i in range(k, len(c)))
        return k


class _InitializerIndex:
    """Where each name first appears in a model's initializer list, for ORT's lookups while it quantizes: what
    ORT's scan returns (the first initializer of that name, or None). ORT never renames an initializer that is in
    the list (it names new ones before adding them), so the names of unchanged elements stay where they were."""

    def __init__(self, onnx_model):
        self.mirror = _Mirror(lambda: onnx_model.model.graph.initializer)
        self.first: dict[str, int] = {}

    def container(self):
        return self.mirror.get_container()

    def find(self, name: str):
        new = self.mirror.update()
        items = self.mirror.items
        if new == 0:
            self.first = {}
        for i in range(new, len(items)):
            self.first.setdefault(items[i].name, i)
        i = self.first.get(name)
        return items[i] if i is not None else None


def _fast_rewiring(onnx_model) -> None:
    """ORT's `replace_input_of_all_nodes` calls a Python function for every input of every node; the same edit,
    over a mirror of the node list, with the nodes that do not read the tensor skipped by protobuf's own
    membership test."""
    nodes = _Mirror(lambda: onnx_model.model.graph.node)
    inputs_of: list = []  # each node's input list (one object per node, like the node's)

    def replace_input_of_all_nodes(old_input_name: str, new_input_name: str) -> None:
        assert isinstance(old_input_name, str) and isinstance(new_input_name, str)
        new = nodes.update()
        del inputs_of[new:]
        inputs_of.extend(n.input for n in nodes.items[new:])
        for inputs in inputs_of:
            if old_input_name in inputs:
                for j, name in enumerate(inputs):
                    if name == old_input_name:
                        inputs[j] = new_input_name

    onnx_model.replace_input_of_all_nodes = replace_input_of_all_nodes
    _fast_extend(onnx_model)


def _fast_extend(onnx_model) -> None:
    """ORT's `initializer_extend` first checks every initializer already in the model (`_check_init`), which can
    only fail for a float8 initializer with a NaN byte. The same, with that pass skipped while the model holds no
    float8 initializer (looked for once; the flag is set when one is added)."""
    import onnx

    float8 = onnx.TensorProto.FLOAT8E4M3FN
    held = [any(i.data_type == float8 for i in onnx_model.initializer())]
    original = onnx_model.initializer_extend

    def initializer_extend(inits):
        if held[0] or len(inits) == 0:
            return original(inits)
        for init in inits:
            onnx_model._check_init(init)
            onnx_model.model.graph.initializer.append(init)
            held[0] = held[0] or init.data_type == float8

    onnx_model.initializer_extend = initializer_extend


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
