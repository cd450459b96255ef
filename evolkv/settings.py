"""What defines a run, in the groups the parts of a search take: what is searched (``SpaceSettings``), on which
data (``DataSettings``), how candidates are scored and the winner chosen (``ScoringSettings``), how the optimiser
runs (``OptimizerSettings``) and where it all runs (``ComputeSettings``). Each group checks its own fields
(``validate``); ``SearchSettings.validate`` checks the groups and what ties them together.

A run stores its settings as one flat dict (``SearchSettings.to_dict``), the form ``SearchSettings(**flat)``
reads back, so ``resume`` rebuilds any stored run. The registries a check needs are imported inside it: this
module imports nothing of evolkv at load time, so the loop, the executors and the Ray actors all read it without
import circles.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from evolkv.errors import EvolKVError

MODES = ("tokens", "quant", "joint")
EXECUTORS = ("local", "ray")
ARM_SEARCHES = ("halving", "tpe")
DEFAULT_BASELINES = ("full", "uniform", "pyramid", "adakv", "streaming", "globaltopk", "prefixkv", "cake",
                     "dynamickv", "kvzip")


@dataclass
class SpaceSettings:
    """What is searched: the memory budget, the mode, and the genes of the space."""

    budget: str = "10%"
    mode: str = "tokens"  # tokens | quant (precision pairs at full budget) | joint (budgets and precisions)
    per_head: bool = False
    groups: int = 0  # tokens: EvolKV's layer groups, searched in turn
    scorer: str = "snapkv"
    scorers: list[str] = field(default_factory=list)  # --scorers: the search picks one per layer (tokens mode)
    arms: int = 2  # tokens: the best baselines' (scorer, rule) arms searched, by successive halving (search.space.Arm)
    knobs: int = 0  # tokens: arms of the best arm's rule with the run's scorer at other knobs (search.space.knob_variants)
    window: int = 8
    target_bits: float = 4.0  # quant/joint: the winner is the best front point at or under this many bits
    group_size: int = 128
    residual: int | list[int] | str = 0  # quant/joint: full-precision top-ranked entries; several = a gene per group
    evicted_bits: int | list[int] | str = 0  # joint, MiKV: evicted tokens' tier bits (0 = drop); several = a gene
    clusters: int = 6  # quant/joint: layer groups sharing a precision pair
    probe_samples: int = 4  # search samples the one-layer sensitivity pass is measured on

    def validate_kind(self) -> None:
        """The mode and the precision target: what every later check depends on."""
        if self.mode not in MODES:
            raise EvolKVError(f"mode must be {', '.join(MODES[:-1])} or {MODES[-1]}, not {self.mode!r}")
        if not 2.0 <= self.target_bits <= 16.0:
            raise EvolKVError(f"--target-bits {self.target_bits:g} is outside [2, 16] bits per KV element")

    def validate(self) -> None:
        """Checks the space's own fields; normalises ``residual`` and ``evicted_bits`` to lists."""
        from evolkv.config import ALLOWED_GROUPS, Budget
        from evolkv.scorers import SCORERS

        self.validate_kind()
        budget = Budget.parse(self.budget)
        for name in [self.scorer, *self.scorers]:
            if name not in SCORERS:
                raise EvolKVError(f"unknown scorer {name!r}; known: {', '.join(SCORERS)}")
        if self.scorers and (self.mode != "tokens" or len(set(self.scorers)) < 2):
            raise EvolKVError("--scorers takes two or more scorers, and belongs to the token search (--mode tokens): "
                              "with one, give --scorer")
        if self.arms < 0:
            raise EvolKVError(f"--arms {self.arms}: give 0 or more")
        if self.knobs < 0:
            raise EvolKVError(f"--knobs {self.knobs}: give 0 or more")
        if self.mode == "tokens":
            if budget.value == 1.0 and budget.kind == "fraction":
                raise EvolKVError("give a --budget below 100% to search token budgets (or --mode quant)")
            return
        from evolkv.search.precision import parse_evicted, parse_residuals

        if self.group_size not in ALLOWED_GROUPS:
            raise EvolKVError(f"--group-size {self.group_size} is not one of {ALLOWED_GROUPS}")
        try:
            self.residual = list(parse_residuals(self.residual))
        except EvolKVError as exc:
            raise EvolKVError(f"--residual: {exc}") from None
        try:
            self.evicted_bits = list(parse_evicted(self.evicted_bits))
        except EvolKVError as exc:
            raise EvolKVError(f"--evicted-bits: {exc}") from None
        if self.mode == "quant" and any(self.evicted_bits):
            raise EvolKVError("--evicted-bits keeps tokens a budget evicts: use it with --mode joint --budget B")
        if self.mode == "quant" and budget.value != 1.0:
            raise EvolKVError("--mode quant keeps every token (--budget 100%); to search token budgets and "
                              "precisions together use --mode joint --budget B")
        if self.groups > 1:
            raise EvolKVError("--groups is the token search's layer schedule; --mode quant and joint group "
                              "layers with --clusters")


@dataclass
class DataSettings:
    """On which data: the tasks, how many samples of each split, and how long they are."""

    tasks: list[str] = field(default_factory=lambda: ["passkey", "vartrack", "prose", "code"])  # tasks.PRESETS["mix"]
    samples: int = 4  # per task and generation on the search split, and on the held-out split
    validation_samples: int = 0  # per task on the validation split the winner is chosen on (0 = samples)
    heldout_samples: int = 0  # per task on the held-out split every table reports (0 = samples)
    pool: int = 0  # per task in the search pool; above ``samples`` each generation draws ``samples`` of them
    race: int = 0  # per task: more validation samples a close call between the leading contenders is scored on
    length: int = 1000
    query_aware: bool = True

    def validate(self) -> None:
        from evolkv.evaluators.tasks import check as check_task

        if not self.tasks:
            raise EvolKVError("give at least one task")
        for task in self.tasks:
            check_task(task)


@dataclass
class ScoringSettings:
    """How candidates are scored, what they are compared with, and how the winner is chosen."""

    objective: str = "kl"  # kl (to the full cache) | nll (gold answer) | task (1 - the task's metric, greedy)
    aggregate: str = "guarded"  # guarded | worst | mean: what the token search is told (search.objectives)
    choose: str = "paired"  # paired | mean | typical | metric: the rule that picks the winner (search.selection)
    tolerance: float = 0.1  # guarded: how much worse than uniform any one task may get before it is penalised
    finalists: int = 4  # best search candidates re-scored on validation beside the baselines
    baselines: list[str] = field(default_factory=lambda: list(DEFAULT_BASELINES))
    batch_size: int = 8

    def validate(self) -> None:
        from evolkv.evaluators.evaluator import OBJECTIVES
        from evolkv.search.baselines import BASELINES
        from evolkv.search.objectives import AGGREGATES
        from evolkv.search.selection import CHOICES

        for name, value, known in (("objective", self.objective, OBJECTIVES), ("aggregate", self.aggregate, AGGREGATES),
                                   ("choose", self.choose, CHOICES)):
            if value not in known:
                raise EvolKVError(f"--{name} must be one of {', '.join(known)}, not {value!r}")
        for name in self.baselines:
            if name not in BASELINES:
                raise EvolKVError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")


@dataclass
class OptimizerSettings:
    """How the optimiser runs."""

    optimizer: str = "cmaes"
    generations: int = 6
    population: int = 8
    step: float = 0.15  # tokens, cmaes: the initial step, relative to the genes' range
    restarts: int = 0  # tokens, cmaes: restarts from the incumbent at twice the step when the search stalls
    time: float = 0.0  # seconds the optimiser's generations may take (0: no limit; ``parse_duration``)
    arm_search: str = "halving"  # tokens, two or more arms: halving (each arm its --optimizer) | tpe (one study)

    def validate(self, objectives: int) -> None:
        from evolkv.search.optimizers import check_objectives

        check_objectives(self.optimizer, objectives)
        if self.arm_search not in ARM_SEARCHES:
            raise EvolKVError(f"--arm-search must be {' or '.join(ARM_SEARCHES)}, not {self.arm_search!r}")


@dataclass
class ComputeSettings:
    """Where it runs: the model, the device and dtype, and the executor."""

    model: str | None = None
    device: str = "auto"  # auto: CUDA where there is a device, else the CPU (``validate`` stores the resolved one)
    dtype: str = "auto"  # auto: bfloat16 on CUDA, float32 on the CPU (``validate`` stores the resolved one)
    executor: str = "local"  # local | ray
    workers: int = 1  # ray: actors (one GPU each with --device cuda)
    ray_address: str | None = None  # ray: auto, ray://host:port; none = start a local Ray

    def resolve_auto(self) -> None:
        """``device`` ``auto`` becomes what this machine has (with a remote cluster too: the driver's)."""
        from evolkv.devices import resolve_device

        if self.device.strip().lower() == "auto":
            self.device = resolve_device(self.device)

    def validate(self) -> None:
        """Resolves ``device`` (a device the machine lacks is an error, never a silent CPU fall back) and
        ``dtype``."""
        from evolkv.devices import resolve_device, resolve_dtype

        if self.executor not in EXECUTORS:
            raise EvolKVError(f"unknown executor {self.executor!r}; known: {', '.join(EXECUTORS)}")
        self.resolve_auto()
        if not (self.executor == "ray" and self.ray_address):  # a remote cluster's GPUs are not ours to see
            self.device = resolve_device(self.device)
        self.dtype = resolve_dtype(self.dtype, self.device)


EFFORT = {  # the search's default effort by where it runs: a GPU scores hundreds of candidates in the time a CPU
    # scores dozens, and more held-out samples make its report mean something (options the user gives win); on a
    # CPU the baselines leave KVzip out: its context replay is one more forward of every prefill. A GPU scores a
    # generation of 16 in one forward per sample: the forward reads every weight once and launches the same
    # kernels whatever the batch, so its cost barely grows with the candidates in it
    "cpu": {"generations": 6, "population": 8, "samples": 4, "heldout_samples": 0, "race": 0, "batch_size": 8,
            "baselines": [name for name in DEFAULT_BASELINES if name != "kvzip"]},
    "cuda": {"generations": 20, "population": 16, "samples": 8, "heldout_samples": 16, "race": 16, "batch_size": 16,
             "baselines": list(DEFAULT_BASELINES)},
}


def default_effort(device: str) -> dict[str, Any]:
    """``EFFORT`` for ``device`` (``auto`` is what this machine has)."""
    from evolkv.devices import resolve_device

    resolved = resolve_device(device) if device.strip().lower() == "auto" else device.strip().lower()
    return EFFORT["cuda" if resolved.startswith("cuda") else "cpu"]


def parse_duration(text: str) -> float:
    """``--time``: ``90``, ``90s``, ``5m``, ``1.5h`` -> seconds (positive and finite)."""
    import math

    raw = text.strip().lower()
    unit = {"s": 1.0, "m": 60.0, "h": 3600.0}.get(raw[-1:], None)
    try:
        value = float(raw[:-1] if unit else raw) * (unit or 1.0)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise EvolKVError(f"--time {text!r} is not a duration: give seconds, or a number with s, m or h (5m)")
    return value


GROUPS = {"space": SpaceSettings, "data": DataSettings, "scoring": ScoringSettings, "search": OptimizerSettings,
          "compute": ComputeSettings}
FIELD_GROUP = {f.name: group for group, cls in GROUPS.items() for f in dataclasses.fields(cls)}


class SearchSettings:
    """Everything that defines a run, as its groups (``space``, ``data``, ``scoring``, ``search``, ``compute``)
    and the ``seed`` of the optimiser and the synthetic tasks. Built from flat names (``SearchSettings(budget=
    "5%", samples=8)``, what a stored run holds), or from groups."""

    def __init__(self, *, seed: int = 0, **given: Any) -> None:
        self.seed = seed
        flat: dict[str, dict[str, Any]] = {group: {} for group in GROUPS}
        for name, value in given.items():
            if name in GROUPS:
                setattr(self, name, value)
            elif name in FIELD_GROUP:
                flat[FIELD_GROUP[name]][name] = value
            else:
                raise TypeError(f"SearchSettings has no setting {name!r}")
        for group, cls in GROUPS.items():
            if group not in given:
                setattr(self, group, cls(**flat[group]))
            elif flat[group]:
                setattr(self, group, dataclasses.replace(getattr(self, group), **flat[group]))

    space: SpaceSettings
    data: DataSettings
    scoring: ScoringSettings
    search: OptimizerSettings
    compute: ComputeSettings

    @classmethod
    def stored(cls, flat: dict[str, Any]) -> SearchSettings:
        """The settings a run stored (names an older or newer evolkv does not know are left out)."""
        kept = {k: v for k, v in flat.items() if k in FIELD_GROUP or k == "seed"}
        kept.setdefault("arms", 0)  # a run stored without arms searched static budgets with its scorer only
        return cls(**kept)

    def replace(self, **flat: Any) -> SearchSettings:
        """A copy with some settings changed, by their flat names."""
        return SearchSettings(**{**self.to_dict(), **flat})

    def to_dict(self) -> dict[str, Any]:
        """The flat form a run stores."""
        out: dict[str, Any] = {}
        for group in GROUPS:
            out.update(dataclasses.asdict(getattr(self, group)))
        out["seed"] = self.seed
        return out

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SearchSettings) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"SearchSettings({', '.join(f'{k}={v!r}' for k, v in self.to_dict().items())})"

    def validate(self) -> None:
        """Each group's own checks, then what ties the groups together; before any model loads."""
        from evolkv.config import Budget
        from evolkv.evaluators.tasks import TASKS

        space, data = self.space, self.data
        space.validate_kind()
        budget = Budget.parse(space.budget)
        self.compute.validate()
        data.validate()
        synthetic = all(task in TASKS for task in data.tasks)
        if budget.kind == "tokens" and synthetic and budget.value >= data.length and space.mode != "quant":
            raise EvolKVError(f"--budget {budget} tokens per KV head keeps all of a {data.length}-token context: "
                              "nothing would be compressed; give fewer tokens or a percentage like 10%")
        self.search.validate(1 if space.mode == "tokens" else 2)
        space.validate()
        self.scoring.validate()
        if space.mode != "tokens" and data.pool:
            raise EvolKVError("--pool (a fresh draw of the search samples each generation) belongs to the token "
                              "search (--mode tokens)")
