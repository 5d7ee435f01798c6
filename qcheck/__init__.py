"""qcheck: find where an int8 ONNX model loses accuracy, and what to do about it.

The package reads as the data flow of a run, one subpackage per stage; a stage imports only the
stages before it (checked by import-linter, see pyproject.toml):

    policy -> model -> data -> quantize -> measure -> analyses -> rules -> search -> run -> cli

`report` renders results alone. `results` (the typed results and their files), `errors` and
`resources` are shared by every stage.
"""

__version__ = "0.1.0"
