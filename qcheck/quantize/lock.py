"""`policy.lock.yaml`: the exact recipe a run settled on, and `qcheck apply` to rebuild its model.

The lock holds what decides the quantized model's bytes: the float model's
hash (and the shapes its inputs were fixed to), the hash of the pre-processed
float model, the calibrated ranges (a file next to the lock, with its hash),
the recipe, and the versions of qcheck, ONNX Runtime and onnx that built it.
`apply_lock` checks each hash, rebuilds with `quantize.build_quantized`
(no calibration, no search) and compares the result with the locked hash.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml

from qcheck.errors import Problem, QcheckError
from qcheck.model.prepare import file_sha256, load_onnx, prepare_model
from qcheck.policy.schema_messages import schema_problems
from qcheck.policy.yaml_spans import load_yaml, to_plain
from qcheck.quantize.calibrate import Ranges, Recipe, build_quantized
from qcheck.resources import schema_path
from qcheck.scratch import install_file, temp_folder

LOCK_NAME = "policy.lock.yaml"
LOCK_VERSION = 1
HEADER = ("# qcheck lock file: the exact recipe this run chose. `qcheck apply policy.lock.yaml` rebuilds the\n"
          "# quantized model below byte for byte, without calibrating or searching. Do not edit by hand.\n")


def data_fingerprint(data) -> str:
    """SHA-256 over every sample of a DataSet as the model sees it (input name, dtype, shape, values), in order."""
    h = hashlib.sha256()
    for i in range(len(data)):
        for name, array in sorted(data[i].items()):
            h.update(f"{i}:{name}:{array.dtype}:{list(array.shape)}".encode())
            h.update(array.tobytes())
    return h.hexdigest()


def lock_document(*, policy_path: Path, policy_sha256: str, model_path: Path, model_sha256: str,
                  shapes: dict[str, list[int]], float_sha256: str, calibration_sha256: str | None,
                  ranges_file: str | None, ranges: Ranges | None,
                  recipe: Recipe, quantized_file: str, quantized_sha256: str, environment: dict,
                  search: dict | None, given: dict | None = None) -> dict:
    """`given`: {path, sha256, base_recipe} of a quantized model made elsewhere that the locked model edits
    (`quantize.given_edit`); `ranges` None: the model needs no calibrated ranges (such edits only)."""
    doc = {
        "lock_version": LOCK_VERSION,
        "policy": {"path": str(policy_path), "sha256": policy_sha256},
        "model": {"path": str(model_path), "sha256": model_sha256, "input_shapes": shapes,
                  "prepared_sha256": float_sha256},
        "calibration_data": {"samples": ranges.samples, "sha256": calibration_sha256} if ranges else None,
        "ranges": {"file": ranges_file, "method": ranges.method, "sha256": ranges.sha256()} if ranges else None,
        "recipe": recipe.to_dict(),
        "recipe_key": recipe.key(),
        "quantized_model": {"file": quantized_file, "sha256": quantized_sha256},
        "versions": {k: environment[k] for k in ("qcheck", "onnxruntime", "onnx")},
        "search": search,
    }
    if given is not None:
        doc["given"] = given
    return doc


def write_lock(doc: dict, path: Path) -> None:
    path.write_text(HEADER + yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")


def read_lock(path: Path) -> dict:
    """The lock file, checked against `schema/lock.schema.json`: every problem with its line."""
    doc = load_yaml(path, what="lock file")
    if not isinstance(doc, dict) or doc.get("lock_version") != LOCK_VERSION:
        raise QcheckError(Problem(f"not a qcheck lock file (no lock_version: {LOCK_VERSION})", file=str(path),
                                  hint="`qcheck run` writes policy.lock.yaml into its output folder"))
    problems = schema_problems(doc, json.loads(schema_path("lock.schema.json").read_text(encoding="utf-8")),
                               str(path), "the lock file")
    if problems:
        for p in problems:
            p.hint = p.hint or "the lock was edited by hand; run `qcheck run` again to write a new one"
        raise QcheckError(problems)
    return to_plain(doc)


def apply_lock(lock_path: Path, out: Path | None = None, model: Path | None = None) -> dict:
    """Rebuild the locked quantized model. Raises QcheckError when the model or ranges no longer match."""
    import onnxruntime

    doc = read_lock(lock_path)
    folder = lock_path.resolve().parent
    where = str(lock_path)
    model_path = Path(model) if model else Path(doc["model"]["path"])
    if not model_path.is_absolute() and not model:
        model_path = folder / model_path
    if not model_path.is_file():
        raise QcheckError(Problem(f"the locked model is not there: {model_path}", file=where,
                                  hint="pass the model's current path with --model"))
    sha = file_sha256(model_path)
    if sha != doc["model"]["sha256"]:
        raise QcheckError(Problem(f"the model changed since the lock was written: {model_path} has sha256 "
                                  f"{sha[:16]}…, the lock {doc['model']['sha256'][:16]}…", file=where,
                                  hint="run `qcheck run` on the policy again to search and lock the new model"))
    ranges = _locked_ranges(doc, folder, where)
    recipe = Recipe(**doc["recipe"])
    if recipe.key() != doc.get("recipe_key"):
        raise QcheckError(Problem("the lock's recipe does not match its recipe_key (edited by hand?)", file=where))
    notes = []
    if doc["versions"].get("onnxruntime") != onnxruntime.__version__:
        notes.append(f"the lock was written with ONNX Runtime {doc['versions'].get('onnxruntime')}, this is "
                     f"{onnxruntime.__version__}: the bytes may differ")
    out = Path(out) if out else folder / "model.applied.onnx"
    _check_out(out, doc, {"the float model": model_path, "the lock file": lock_path}, folder)
    final, out = out, None
    with temp_folder("apply") as tmp:
        out = Path(tmp) / "model.applied.onnx"  # moved over `final` only once whole
        # a given model's float original is read as the run read it: not optimized (its nodes are the given's twins)
        prepared = prepare_model(load_onnx(model_path), model_path, dict(doc["model"].get("input_shapes") or {}),
                                 Path(tmp), optimize=not doc.get("given"))
        _check_data(doc, prepared, where, notes)
        float_sha = file_sha256(prepared.path)
        if float_sha != doc["model"]["prepared_sha256"]:
            notes.append("pre-processing gave a different float model than when the lock was written "
                         "(another onnx or ONNX Runtime version?)")
        if doc.get("given"):
            _rebuild_given(doc, prepared, ranges, recipe, out, folder, where)
        else:
            build_quantized(prepared.path, ranges, recipe, out, source=model_path)
        built = file_sha256(out)
        try:
            install_file(out, final)
        except OSError as exc:
            raise QcheckError(Problem(f"cannot write {final}: {exc.strerror or exc}",
                                      hint="choose a folder you can write to with --out")) from exc
    return {"out": str(final), "sha256": built, "expected": doc["quantized_model"]["sha256"],
            "identical": built == doc["quantized_model"]["sha256"], "notes": notes}


def _check_out(out: Path, doc: dict, inputs: dict[str, Path], folder: Path) -> None:
    """`--out` must not be a file this apply reads (`--out model.onnx` replaced the user's float model) nor a
    folder; an existing file elsewhere is replaced, as asked, but only once the new model is whole."""
    for key, what in (("ranges", "the locked ranges"), ("given", "the quantized model it edits")):
        if (doc.get(key) or {}).get("file" if key == "ranges" else "path"):
            name = Path(doc[key]["file" if key == "ranges" else "path"])
            inputs[what] = name if name.is_absolute() else folder / name
    if out.is_dir():
        raise QcheckError(Problem(f"--out {out} is a folder", hint="give a file name, e.g. --out model.int8.onnx"))
    if not out.parent.is_dir():
        raise QcheckError(Problem(f"--out {out}: the folder {out.parent} does not exist", hint="create it first"))
    for what, path in inputs.items():
        if out.resolve() == path.resolve() or (out.exists() and path.exists() and out.samefile(path)):
            raise QcheckError(Problem(f"--out {out} is {what} this apply reads; writing there would replace it",
                                      hint="give another file name, e.g. --out model.int8.onnx"))


def _locked_ranges(doc: dict, folder: Path, where: str) -> Ranges | None:
    """The lock's calibrated ranges, checked against its hash (None: a given model's edits that need none)."""
    if doc.get("ranges") is None:
        if not doc.get("given"):
            raise QcheckError(Problem("the lock names no calibration ranges (edited by hand?)", file=where,
                                      hint="run `qcheck run` again to write a new lock"))
        return None
    ranges_path = folder / doc["ranges"]["file"]
    if not ranges_path.is_file():
        raise QcheckError(Problem(f"the locked calibration ranges are not there: {ranges_path}", file=where,
                                  hint="keep the lock file in its output folder, next to its ranges file"))
    try:
        ranges = Ranges.load(ranges_path)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, OSError) as exc:
        raise QcheckError(Problem(f"the locked calibration ranges cannot be read ({type(exc).__name__}: {exc})",
                                  file=str(ranges_path), hint="run `qcheck run` again to write them")) from None
    if ranges.sha256() != doc["ranges"]["sha256"]:
        raise QcheckError(Problem(f"the calibration ranges changed since the lock was written ({ranges_path})",
                                  file=where, hint="the calibration data or method differ: run `qcheck run` again"))
    return ranges


def _rebuild_given(doc: dict, prepared, ranges: Ranges | None, recipe: Recipe, out: Path, folder: Path,
                   where: str) -> None:
    """A lock on edits to a quantized model made elsewhere: that model (checked by hash), edited again."""
    import onnx

    from qcheck.quantize.given_edit import rebuild_given

    given = doc["given"]
    path = Path(given["path"])
    path = path if path.is_absolute() else folder / path
    if not path.is_file():
        raise QcheckError(Problem(f"the locked quantized model (`quantized:`) is not there: {path}", file=where,
                                  hint="put it back at that path, or run `qcheck run` on the policy again"))
    if file_sha256(path) != given["sha256"]:
        raise QcheckError(Problem(f"the quantized model changed since the lock was written: {path}", file=where,
                                  hint="run `qcheck run` on the policy again to search and lock the new model"))
    rebuild_given(path, onnx.load(str(prepared.path)), dict(doc["model"].get("input_shapes") or {}),
                  Recipe(**given["base_recipe"]), ranges, recipe, out)


def _check_data(doc: dict, prepared, where: str, notes: list[str]) -> None:
    """The policy's calibration data, read as the run read them, must be what the ranges were computed from."""
    from qcheck.data.readers import open_data
    from qcheck.policy.loader import load_policy

    policy_path = Path(doc["policy"]["path"])
    expected = (doc.get("calibration_data") or {}).get("sha256")
    if not expected:
        return
    if not policy_path.is_file():
        notes.append(f"the policy {policy_path} is not there: the calibration data were not checked")
        return
    policy = load_policy(policy_path)
    data = open_data(policy.data.calibration, prepared.inputs, policy.data.preprocess)
    if data_fingerprint(data) != expected:
        raise QcheckError(Problem(f"the calibration data changed since the lock was written "
                                  f"({policy.data.calibration.path}, {len(data)} samples now)", file=where,
                                  hint="the locked ranges no longer describe the data: run `qcheck run` again"))
