"""What defines a run: the settings a search is started with, stored with the run so ``resume`` rebuilds it.

A leaf module (no evolkv imports), so the loop, the executors and the Ray actors all read it without import
circles.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class SearchSettings:
    """Everything that defines a run (stored with it, so ``resume`` can rebuild it)."""

    model: str | None = None
    budget: str = "10%"
    optimizer: str = "cmaes"
    generations: int = 6
    population: int = 8
    seed: int = 0
    tasks: list[str] = field(default_factory=lambda: ["passkey", "vartrack", "prose", "code"])  # tasks.PRESETS["mix"]
    samples: int = 4  # per task and generation on the search split, and on the held-out split
    validation_samples: int = 0  # per task on the validation split the winner is chosen on (0 = samples)
    heldout_samples: int = 0  # per task on the held-out split every table reports (0 = samples)
    pool: int = 0  # per task in the search pool; above ``samples`` each generation draws ``samples`` of them
    objective: str = "kl"  # kl (to the full cache) | nll (gold answer) | task (1 - the task's metric, greedy)
    aggregate: str = "guarded"  # guarded | worst | mean: what the token search is told (search.objectives.aggregate)
    choose: str = "mean"  # mean | typical | metric: which validation rule picks the token search's winner (search.selection)
    tolerance: float = 0.1  # guarded: how much worse than uniform any one task may get before it is penalised
    finalists: int = 4  # best search candidates re-scored on validation beside the baselines
    length: int = 1000
    step: float = 0.15  # tokens, cmaes: the initial step, relative to the genes' range (runs stored without one: 0.05)
    restarts: int = 0  # tokens, cmaes: restarts from the incumbent at twice the step when the search stalls
    per_head: bool = False
    groups: int = 0
    scorer: str = "snapkv"
    scorers: list[str] = field(default_factory=list)  # --scorers: the search picks one per layer (tokens mode)
    window: int = 8
    query_aware: bool = True
    baselines: list[str] = field(default_factory=lambda: ["full", "uniform", "pyramid", "adakv", "streaming",
                                                          "globaltopk", "prefixkv", "cake", "dynamickv", "kvzip"])
    batch_size: int = 8
    device: str = "cpu"
    dtype: str = "auto"  # auto: bfloat16 on CUDA, float32 on the CPU (the CLI stores the resolved one)
    mode: str = "tokens"  # tokens | quant (precision pairs at full budget) | joint (budgets and precisions)
    target_bits: float = 4.0  # quant/joint: the winner is the best front point at or under this many bits
    group_size: int = 128
    residual: int | list[int] | str = 0  # quant/joint: full-precision top-ranked entries; several = a gene per group
    evicted_bits: int | list[int] | str = 0  # joint, MiKV: evicted tokens' tier bits (0 = drop); several = a gene
    clusters: int = 6  # quant/joint: layer groups sharing a precision pair
    probe_samples: int = 4  # search samples the one-layer sensitivity pass is measured on
    executor: str = "local"  # local | ray
    workers: int = 1  # ray: actors (one GPU each with --device cuda)
    ray_address: str | None = None  # ray: auto, ray://host:port; none = start a local Ray

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
