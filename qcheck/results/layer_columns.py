"""The statistics qcheck measures per tensor: the names rules and reports use.

One table, so the rule engine can refuse a condition that names something
that does not exist, `qcheck rules --stats` can list them, and the docs are
generated from the same text.
"""

from __future__ import annotations

TENSOR_STATISTICS: dict[str, str] = {
    # identity
    "name": "tensor name in the float model",
    "kind": "activation, weight or bias",
    "node": "producing node (activations) or consuming node (weights)",
    "op_type": "op type of that node",
    "order": "position of that node in topological order (0 = first)",
    "dtype": "integer type of the quantized tensor (uint8, int8, int16, int32)",
    # quantization parameters
    "scale": "quantization step (median over channels when per-channel)",
    "zero_point": "integer that represents real 0",
    "per_channel": "true when the tensor has one scale per channel",
    "range": "real interval the integer grid covers: scale * (qmax - qmin)",
    "calib_min": "lowest value seen in calibration (activations)",
    "calib_max": "highest value seen in calibration (activations)",
    # a quantized model given to qcheck (`quantized:`): its exported range against what the data reach
    "range_min": "given model: lowest real value the exported grid represents ((qmin - zero_point) * scale)",
    "range_max": "given model: highest real value the exported grid represents ((qmax - zero_point) * scale)",
    "range_over_data": "given model: width of the exported range / width the float tensor reaches on the evaluation "
                       "data (far above 1: unused steps, e.g. an unconverged QAT estimate; below 1: clipping)",
    # per-layer (local) error: each quantized op sees the same input as its float twin
    "num_elements": "values compared, over all evaluation samples",
    "mean_error": "mean of float - dequantized",
    "stddev": "standard deviation of the error",
    "max_abs_error": "largest absolute error",
    "mean_abs_error": "mean absolute error",
    "mean_squared_error": "mean squared error",
    "rmse": "root mean squared error",
    "rmse_scale": "rmse / scale: 0.289 for pure rounding noise",
    "cosine": "cosine similarity of float and dequantized values",
    "sqnr": "signal-to-quantization-noise ratio, dB",
    # distribution of the float tensor against the grid
    "clip_fraction": "share of float values beyond the grid by more than half a step",
    "max_overshoot": "largest distance beyond the grid, in steps",
    "float_min": "lowest float value seen in evaluation",
    "float_max": "highest float value seen in evaluation",
    "spread_steps": "median over samples of (max - min) / scale: grid steps one sample uses",
    "weight_error_share": "the quantized weights' part of the node's error, W / (W + R): W from the weights, R the rest (output rounding); 0..1, ~1: weight-dominated",
    # distribution of the float values
    "skewness": "skewness of the float values",
    "kurtosis": "excess kurtosis of the float values: 0 for a normal distribution, large for heavy tails",
    "bimodality": "bimodality coefficient (skew^2 + 1) / (kurtosis + 3); above 0.555 suggests two modes",
    "channels": "number of channels (axis 1 of activations, the output-channel axis of weights)",
    "channel_range_ratio": "widest channel's range / the median range of the channels that vary: an outlier channel is large",
    "worst_channel": "index of the channel with the widest range",
    # position in the graph
    "layer_index": "rank of the producing layer among quantized layers in graph order (0 = first)",
    "is_output": "true for a model output",
    "input_range_ratio": "widest / narrowest calibrated range among the producing node's inputs (Concat, Add ...)",
    "per_layer_missing": "why the per-layer columns are empty (null) for this tensor, when they are",
    # node sensitivity (analyses): the node this tensor belongs to, quantized alone on the emulation model
    "sensitivity_rank": "rank of the node in the sensitivity ranking (1 = quantizing it alone hurts the outputs most)",
    "sensitivity_cosine": "worst output cosine with only this node quantized",
    "weight_only_cosine": "worst output cosine with only this node's weights quantized (worst nodes only)",
    "activation_only_cosine": "worst output cosine with only this node's activations quantized (worst nodes only)",
    "recovered_cosine": "output cosine gained by keeping this node float, everything else quantized (worst nodes only)",
    # whole-model error: float and quantized models run separately, errors accumulate
    "whole_mean_error": "mean error, whole-model mode",
    "whole_max_abs_error": "largest absolute error, whole-model mode",
    "whole_mean_squared_error": "mean squared error, whole-model mode",
    "whole_rmse_scale": "rmse / scale, whole-model mode",
    "whole_cosine": "cosine similarity, whole-model mode",
    "whole_sqnr": "SQNR in dB, whole-model mode",
}

# The per-layer (local) columns: measured by the per-layer twin (measure/twin.py), which runs only when something in
# the run reads one of them (run/needs.py); otherwise null, and `per_layer_missing` says why.
PER_LAYER_ERROR = ("num_elements", "mean_error", "stddev", "max_abs_error", "mean_abs_error", "mean_squared_error",
                   "rmse", "rmse_scale", "cosine", "sqnr")
PER_LAYER_STATISTICS = (*PER_LAYER_ERROR, "weight_error_share")
# the keys of `results.measure.not_computed` (column groups left null when nothing reads them)
PER_LAYER_GROUP = "per-layer statistics"
DISTRIBUTION_GROUP = "distribution statistics"
