"""Hardware target profiles: what a target can run and what each remedy costs there.

The built-in profiles are in `qcheck/profiles/targets.yaml`, each documented.
A policy names one (`target: npu`), points at a YAML file of its own
(`target: ./my-npu.yaml`) or writes one inline; a user profile may
`extends:` a built-in one and change only what differs.

Rules (target-aware findings), the scheme comparison (what to recommend) and
the fallback search (what a recipe costs, what it may not use) all read the
same `TargetProfile`.
"""

from __future__ import annotations

import copy
import difflib
import json
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from qcheck.errors import PolicyError, Problem
from qcheck.policy.paths import resolve_in
from qcheck.policy.yaml_spans import load_yaml, to_plain
from qcheck.resources import schema_path

_PROFILES = Path(__file__).resolve().parent / "profiles" / "targets.yaml"
_SCHEMA = schema_path("target.schema.json")

DEFAULT_TARGET = "cpu"  # a policy without `target:`
REMEDY_COSTS = ("float_node", "float_island", "int16_tensor", "per_channel", "calibration_method", "explicit_range")
# The target profile's remedy (a key of its `costs`) behind each rule and search remedy; remedies the target
# cannot use (`TargetProfile.allows`) are neither proposed in findings nor tried by the search.
REMEDY_COST_KEY: dict[str, str] = {
    "keep_float": "float_node", "skip_first": "float_node", "keep_float_flagged": "float_node",
    "int16_activations": "int16_tensor", "int16_weights": "int16_tensor", "scheme": "int16_tensor",
    "per_channel": "per_channel", "calibration_method": "calibration_method", "explicit_range": "explicit_range",
    "widen_range": "explicit_range",
}

# On a quantized model given to qcheck (`quantized:`), each range the search moves is an edit of the exported model
# (a QAT export's trained grids), whatever the hardware charges for a range (0 on most targets): at least this per
# tensor, so one tensor re-ranged is cheaper than one int16 tensor (0.5 on cpu), and a calibration method switch,
# which re-ranges every tensor, costs what it is.
GIVEN_RANGE_EDIT_COST = 0.1


@dataclass
class TargetProfile:
    name: str
    description: str = ""
    schemes: list[str] = field(default_factory=list)
    prefer: list[str] = field(default_factory=list)
    float_fallback: bool = True
    int16: bool = True
    float16: bool = True
    activations: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, Any] = field(default_factory=dict)
    io: str = "float32"
    costs: dict[str, float | None] = field(default_factory=dict)
    extends: str | None = None

    @property
    def integer_only(self) -> bool:
        return not self.float_fallback

    def can_run(self, scheme: str) -> bool:
        return scheme in self.schemes

    def allows(self, remedy: str) -> bool:
        """Whether the fallback search may use a remedy (a key of `costs`) on this target."""
        if remedy in ("float_node", "float_island") and not self.float_fallback:
            return False
        if remedy == "int16_tensor" and not self.int16:
            return False
        return self.costs.get(remedy, 0.0) is not None

    def cost(self, remedy: str, count: int = 1) -> float:
        """Relative cost of using a remedy `count` times; infinite where the target cannot use it."""
        if not self.allows(remedy):
            return float("inf")
        return float(self.costs.get(remedy) or 0.0) * count

    def to_dict(self) -> dict:
        return asdict(self)


@lru_cache(maxsize=1)
def _builtin_documents() -> dict[str, dict]:
    return to_plain(load_yaml(_PROFILES, what="target profiles"))


def builtin_names() -> list[str]:
    return list(_builtin_documents())


def builtin_profile(name: str) -> TargetProfile:
    docs = _builtin_documents()
    if name not in docs:
        raise KeyError(name)
    return TargetProfile(name=name, **copy.deepcopy(docs[name]))


def _merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def resolve_target(spec: Any, folder: Path, file: str, line: int | None) -> TargetProfile:
    """A policy's `target:` value (name, path to a YAML profile, or inline mapping) -> profile.

    Raises PolicyError naming the file and line of whatever is wrong.
    """
    names = builtin_names()
    if isinstance(spec, str) and not spec.endswith((".yaml", ".yml")):
        if spec in names:
            return builtin_profile(spec)
        guess = difflib.get_close_matches(spec, names, n=1)
        hint = f"did you mean '{guess[0]}'?" if guess else None
        raise PolicyError(Problem(f"unknown target '{spec}'; built-in targets: {', '.join(names)}, or a path to a "
                                  f"profile .yaml file", file, line, hint=hint or "see qcheck/profiles/targets.yaml"))
    if isinstance(spec, str):
        path = resolve_in(folder, spec)
        if not path.is_file():
            raise PolicyError(Problem(f"target profile not found: {path}", file, line,
                                      hint="relative paths start at the policy's folder"))
        doc = load_yaml(path, what="target profile")
        file, line, default_name = str(path), 1, path.stem
    else:
        doc, default_name = spec, "custom"
    _validate(doc, file)
    doc = to_plain(doc)
    base_name = doc.get("extends")
    if base_name is not None and base_name not in names:
        raise PolicyError(Problem(f"target profile extends unknown target '{base_name}'; built-in targets: "
                                  f"{', '.join(names)}", file, line))
    base = _builtin_documents()[base_name] if base_name else _builtin_documents()["cpu"]
    merged = _merge(base, {k: v for k, v in doc.items() if k != "name"})
    merged.pop("extends", None)
    return TargetProfile(name=doc.get("name", default_name), extends=base_name or "cpu", **merged)


def _validate(doc: Any, file: str) -> None:
    from qcheck.policy.schema_messages import schema_problems  # policy imports this module

    problems = schema_problems(doc, json.loads(_SCHEMA.read_text(encoding="utf-8")), file, "the target profile")
    if problems:
        raise PolicyError(problems)
