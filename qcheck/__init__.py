"""qcheck: find where an int8 ONNX model loses accuracy, and what to do about it."""

__version__ = "0.1.0"
