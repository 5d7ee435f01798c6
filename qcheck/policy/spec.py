"""The typed policy: the plain data every later stage reads, and the names a `require:` line may use.

Built from the YAML file by `policy.loader`; nothing here reads a file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qcheck.errors import Problem
from qcheck.policy.expr import Expression
from qcheck.policy.metric_names import MODEL_METRIC_NAMES
from qcheck.policy.targets import DEFAULT_TARGET, TargetProfile, builtin_profile
from qcheck.policy.yaml_spans import line_of

# --------------------------------------------------------------------------- typed policy


@dataclass
class FetchSpec:
    pip: str
    member: str
    sha256: str | None = None


@dataclass
class ModelSpec:
    path: Path
    fetch: FetchSpec | None = None


@dataclass
class DataSource:
    path: Path
    format: str = "auto"
    limit: int | None = None


@dataclass
class Preprocess:
    size: tuple[int, int] | None = None
    resize: str = "stretch"  # stretch, short_side_crop, letterbox
    resize_short: int | None = None
    pad_value: float = 114.0
    layout: str = "NCHW"
    color: str = "RGB"
    scale: float = 1.0 / 255.0
    mean: list[float] | None = None
    std: list[float] | None = None


@dataclass
class DataSpec:
    calibration: DataSource | None
    evaluation: DataSource | None = None
    preprocess: Preprocess = field(default_factory=Preprocess)


@dataclass
class TensorOverride:
    quant_type: str | None = None
    symmetric: bool | None = None
    reduce_range: bool | None = None
    rmin: float | None = None
    rmax: float | None = None
    axis: int | None = None  # a weight's per-channel axis


@dataclass
class QuantizationSpec:
    scheme: str = "int8"
    io: str | None = None  # inputs/outputs of the built model (int8-only: int8|uint8; float16: float32|float16)
    activations: str = "uint8"
    weights: str = "int8"
    per_channel: bool = True
    calibration: str = "minmax"
    percentile: float = 99.999
    num_bins: int = 2048
    symmetric_activations: bool = False
    reduce_range: bool = False
    exclude_nodes: list[str] = field(default_factory=list)
    exclude_op_types: list[str] = field(default_factory=list)
    overrides: dict[str, TensorOverride] = field(default_factory=dict)


@dataclass
class MetricSpec:
    name: str
    output: str | None
    slice: str | None = None
    metric: str = "max_abs"
    task: str | None = None  # a task metric (qcheck/tasks): classification, detection, ctc, ...
    options: dict[str, Any] = field(default_factory=dict)  # the task metric's keys as written


@dataclass
class LayerMetricSpec:
    """A per-tensor statistic the policy declares (`layer_metrics:`): an expression over the tensor's float,
    quantized and difference arrays (policy.array_expr), or a python function; one column per metric."""

    name: str
    expression: Any = None  # an ArrayExpression, or None for a python function
    function: str | None = None  # `module:function` or an entry point in group qcheck.metrics
    over: str = "samples"  # samples: the mean over samples of each sample's value; elements: over all elements
    mode: str = "local"  # local: the per-layer comparison (float twin); whole: the float model's tensor
    chart: bool = False  # a chart of it in the report
    timeout: float = 300.0  # seconds per call of a python function
    file: str | None = None
    line: int | None = None

    @property
    def text(self) -> str:
        return self.expression.text if self.expression is not None else f"function {self.function}"


@dataclass
class Requirement:
    text: str
    expression: Expression
    line: int | None = None
    file: str | None = None


@dataclass
class RulesSpec:
    packs: list[str] = field(default_factory=lambda: ["builtin"])
    disable: list[str] = field(default_factory=list)
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    inline: list[dict] = field(default_factory=list)  # rules written in the policy (checked by rules.load_inline)
    doc: Any = field(default=None, repr=False)  # the `rules:` mapping with line info, for error lines
    layer_metrics: list[str] = field(default_factory=list)  # the policy's `layer_metrics:`: names rules may read


@dataclass
class MeasureSpec:
    modes: list[str] = field(default_factory=lambda: ["local", "whole"])
    weights: bool = True


DEFAULT_RETRIES = 3


@dataclass
class ExecutorSpec:
    """Where work runs: `local` (a process pool on this machine) or `ray` (a Ray cluster). A sweep's runs and an
    analysis's shards (`analyses.executor`) are described alike; qcheck.compute runs them."""

    kind: str = "local"
    workers: int | None = None  # local: processes; ray without an address: CPUs of the cluster it starts
    address: str | None = None  # ray: auto, ray://host:port; None: a new cluster on this machine (127.0.0.1)
    num_cpus: float = 1.0  # ray: CPUs each task declares
    max_retries: int = DEFAULT_RETRIES  # a task whose worker dies is started again this often

    @classmethod
    def from_document(cls, value) -> ExecutorSpec:
        """`local` | `ray` | {kind:, workers:, address:, num_cpus:, max_retries:}, validated by a JSON Schema."""
        if isinstance(value, str):
            return cls(kind=value)
        return cls(kind=value["kind"], workers=value.get("workers"), address=value.get("address"),
                   num_cpus=float(value.get("num_cpus", 1.0)), max_retries=int(value.get("max_retries", DEFAULT_RETRIES)))


@dataclass
class AnalysesSpec:
    samples: int = 8
    memory_mb: int = 1024  # the run's working set: analyses (activation_store), measure (sessions), calibrate (histograms)
    sensitivity: bool = True
    metric: str = "auto"  # auto: the metric the `require:` lines name (resolved by the loader); unresolved: cosine
    detail: int = 20
    curves: bool = True
    top_k: int = 3
    distributions: bool = True
    focus_nodes: int = 3
    confirm: bool = True
    tolerance: float = 0.01
    # None: the configurations run in this process (one session per core, threads); else on these executors,
    # split into `shards` shards per group of configurations (default: the executor's workers)
    executor: ExecutorSpec | None = None
    shards: int | None = None

    @property
    def any(self) -> bool:
        return self.sensitivity or self.curves or self.distributions or self.confirm


@dataclass
class ReportSpec:
    out: Path = Path("qcheck-out")
    formats: list[str] = field(default_factory=lambda: ["html", "pdf"])
    title: str | None = None
    templates: list[Path] = field(default_factory=list)  # a team's template folders, searched first
    graph_color_by: str = "rmse_scale"  # the per-tensor statistic the graph view colors nodes by


SEARCH_STRATEGIES = ("auto", "greedy", "bisect", "exhaustive")
SEARCH_REMEDIES = ("keep_float", "int16_activations", "int16_weights", "explicit_range", "widen_range", "skip_first",
                   "keep_float_flagged", "scheme", "per_channel", "calibration_method", "symmetric", "reduced_range")
SEARCH_COSTS = ("profile", "latency")
DEFAULT_CONFIDENCE = 0.9  # search.confidence


@dataclass
class SearchBudget:
    max_float_nodes: int = 10
    max_int16_tensors: int = 10
    max_trials: int = 100
    max_seconds: float = 600.0


@dataclass
class SearchSpec:
    """The fallback search (`search:`): how to look for a recipe that meets `require:` (qcheck.search)."""

    strategy: str = "auto"
    remedies: list[str] = field(default_factory=lambda: ["keep_float", "int16_activations"])
    candidates: int = 20
    width: int = 8
    budget: SearchBudget = field(default_factory=SearchBudget)
    finalists: int = 3
    latency_repeats: int = 7
    cost: str = "profile"  # profile: the target profile's costs choose; latency: the finalists' measured latency
    explicit_range_from: str = "percentile"  # explicit_range: the calibration method whose ranges are tried
    # evaluation samples the search never sees, used to judge the model it recommends: a count (>= 1) or a
    # fraction (< 1) of the evaluation data, the last ones in its order; 0: none
    holdout: float = 0
    # a candidate is a fix only when every requirement holds at its one-sided bootstrap bound at this confidence
    # over the search's samples (a margin for sampling noise); 0 (or `off`): on the values themselves
    confidence: float = DEFAULT_CONFIDENCE


@dataclass
class Policy:
    path: Path
    model: ModelSpec
    data: DataSpec
    quantized: ModelSpec | None = None  # a quantized model made elsewhere, checked against `model` (its float original)
    inputs: dict[str, list[int]] = field(default_factory=dict)
    target: TargetProfile = field(default_factory=lambda: builtin_profile(DEFAULT_TARGET))
    quantization: QuantizationSpec = field(default_factory=QuantizationSpec)
    metrics: dict[str, MetricSpec] = field(default_factory=dict)
    layer_metrics: dict[str, LayerMetricSpec] = field(default_factory=dict)
    require: list[Requirement] = field(default_factory=list)
    rules: RulesSpec = field(default_factory=RulesSpec)
    measure: MeasureSpec = field(default_factory=MeasureSpec)
    analyses: AnalysesSpec = field(default_factory=AnalysesSpec)
    report: ReportSpec = field(default_factory=ReportSpec)
    compare: list[str] = field(default_factory=list)  # schemes to build and compare (`compare:`); empty: none
    search: SearchSpec | None = None  # no `search:` section: no search
    raw: dict = field(default_factory=dict)  # the document as written, without line info
    _doc: Any = field(default=None, repr=False)  # the document with line info

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def generic_metrics(self) -> dict[str, MetricSpec]:
        """The `metrics:` entries without `task:` (an output or slice compared with one statistic)."""
        return {name: spec for name, spec in self.metrics.items() if spec.task is None}

    def problem_at(self, keys: tuple | list, message: str, hint: str | None = None) -> Problem:
        """A Problem pointing at the line of `keys` in the policy file."""
        return Problem(message, file=str(self.path), line=line_of(self._doc, list(keys)), hint=hint)


# Names a `require:` line may use besides the policy's own metrics.
REQUIRE_NAMES = tuple(f"model.{m}" for m in MODEL_METRIC_NAMES) + (
    "findings.error",
    "findings.warning",
    "findings.info",
)


# --------------------------------------------------------------------------- loading


