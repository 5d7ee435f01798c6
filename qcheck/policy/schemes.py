"""The post-training quantization schemes a policy can name (how each is built lives in `quantize.schemes`)."""

from __future__ import annotations

SCHEMES = ("int8", "int8-only", "a16w8", "dynamic", "float16")


CALIBRATED = ("int8", "int8-only", "a16w8")  # need calibration data and have QDQ pairs to measure


DESCRIPTIONS = {
    "float32": "the float model, for reference",
    "int8": "full integer, float fallback where an op has no integer kernel",
    "int8-only": "integer only, integer inputs and outputs",
    "a16w8": "int16 activations, int8 weights (16x8)",
    "dynamic": "int8 weights, activations quantized at run time",
    "float16": "float16 weights and compute",
}
