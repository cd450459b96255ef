"""The genome: a frozen, validated KV-cache compression config and its JSON form.

A config says, for one model architecture, how many tokens each layer and each KV head keeps after prefill
and at which key/value precision it stores them. JSON form (the export format)::

    {"schema": "evolkv.kvconfig/1",
     "model": {"name": ..., "num_layers": 18, "num_kv_heads": 1, "head_dim": 256, "fingerprint": ...},
     "budget": "10%",
     "scorer": {"name": "snapkv", "window": 8, "kernel": 5},
     "layers": [{"budget": 0.12, "heads": [1.0], "k_bits": 16, "v_bits": 16, "group_size": 32, "residual": 0}],
     "provenance": {...}}

A layer's ``budget`` is in the unit of the config's budget: a fraction of the context (``"10%"``) or tokens
per KV head (``"128"``). Its ``heads`` split that layer's tokens among KV heads (shares summing to 1), or is
``null`` for the AdaKV rule (heads share the layer's tokens by score, per sample).
"""

from __future__ import annotations

import decimal
import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from evolkv.errors import BudgetError, ConfigError

SCHEMA = "evolkv.kvconfig/1"
# a config whose per-prompt allocation has searched priors or a static share (``KVConfig.prior``, ``static``):
# a reader of the first schema would apply its allocation without them, so it says the second
SCHEMA_POLICY = "evolkv.kvconfig/2"
SCHEMAS = (SCHEMA, SCHEMA_POLICY)
ALLOWED_BITS = (16, 8, 4, 2)
ALLOWED_GROUPS = (32, 64, 128)
EVICTED_BITS = (0, 8, 4, 2)

_BUDGET_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(%?)\s*$")


@dataclass(frozen=True)
class Budget:
    """A KV memory budget: a fraction of the context's entries, or tokens per KV head."""

    kind: Literal["fraction", "tokens"]
    value: float

    def __post_init__(self) -> None:
        if self.kind == "fraction" and not 0.0 < self.value <= 1.0:
            raise BudgetError(f"budget {self.value:.4g} of the context is outside (0%, 100%]")
        if self.kind == "tokens" and (self.value < 1 or self.value != int(self.value)):
            raise BudgetError(f"budget of {self.value:g} tokens must be a whole number >= 1")
        if self.kind not in ("fraction", "tokens"):
            raise BudgetError(f"budget kind must be 'fraction' or 'tokens', not {self.kind!r}")

    @classmethod
    def parse(cls, text: str | float | int) -> Budget:
        """``"1.5%"`` -> 1.5% of the context; ``"128"`` -> 128 tokens per head."""
        match = _BUDGET_RE.match(str(text))
        if not match:
            raise BudgetError(f"budget {text!r} is neither a percentage like '10%' nor a token count like '128'")
        number, percent = float(match.group(1)), match.group(2)
        if not math.isfinite(number):
            raise BudgetError(f"budget {text!r} is not a finite number: give a percentage like '10%' or a token "
                              "count like '128'")
        if percent:
            if number <= 0 or number > 100:
                raise BudgetError(f"budget {text!r} must be in (0%, 100%]")
            with decimal.localcontext(prec=80):  # correctly rounded: str(budget) parses back to the same value
                return cls("fraction", float(decimal.Decimal(match.group(1)) / 100))
        if number <= 0:
            raise BudgetError(f"budget {text!r} must be at least 1 token per head")
        if number != int(number):
            raise BudgetError(f"budget {text!r}: a token count is a whole number (write '{number:g}%' for a share)")
        return cls("tokens", number)

    def per_head_tokens(self, context_len: int) -> float:
        """Average tokens each KV head keeps for a context of ``context_len`` tokens."""
        if self.kind == "fraction":
            return self.value * context_len
        return min(self.value, float(context_len))

    def __str__(self) -> str:
        return f"{_percent(self.value)}%" if self.kind == "fraction" else f"{int(self.value)}"


def _percent(value: float) -> str:
    """The shortest percentage text that parses back to exactly ``value`` ("10", "1.5", "98.828125")."""
    pct = value * 100
    up = down = pct
    candidates = [pct]
    for _ in range(16):  # x * 100 / 100 is not always x: a neighbour of x * 100 is
        up, down = math.nextafter(up, math.inf), math.nextafter(down, -math.inf)
        candidates += [up, down]
    with decimal.localcontext(prec=80):
        for candidate in candidates:
            for text in (f"{candidate:g}", repr(candidate)):
                if float(decimal.Decimal(text) / 100) == value:
                    return text
        return format((decimal.Decimal(value) * 100).normalize(), "f")  # exact, long, always parses back


@dataclass(frozen=True)
class ModelSpec:
    """What a config must agree with: the attention geometry of the model it was searched on."""

    name: str
    model_type: str
    num_layers: int
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    layer_types: tuple[str, ...]
    sliding_window: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "layer_types", tuple(self.layer_types))
        if len(self.layer_types) != self.num_layers:
            raise ConfigError(f"model spec lists {len(self.layer_types)} layer types for {self.num_layers} layers")
        if self.num_q_heads % self.num_kv_heads:
            raise ConfigError(f"{self.num_q_heads} query heads do not group over {self.num_kv_heads} KV heads")

    @property
    def fingerprint(self) -> str:
        """Hash of the geometry (not the name): equal for every checkpoint of one architecture."""
        geometry = [self.model_type, self.num_layers, self.num_q_heads, self.num_kv_heads, self.head_dim,
                    list(self.layer_types), self.sliding_window]
        return hashlib.sha256(json.dumps(geometry).encode()).hexdigest()[:16]

    def is_sliding(self, layer: int) -> bool:
        return self.sliding_window is not None and self.layer_types[layer] == "sliding_attention"

    def describe(self) -> str:
        return (f"{self.num_layers} layers, {self.num_kv_heads} KV heads, head_dim {self.head_dim}, "
                f"{self.model_type}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "layer_types": list(self.layer_types), "fingerprint": self.fingerprint}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        data = dict(data)
        fingerprint = data.pop("fingerprint", None)
        spec = cls(**data)
        if fingerprint is not None and fingerprint != spec.fingerprint:
            raise ConfigError("model fingerprint does not match the model fields (config edited by hand?)")
        return spec


@dataclass(frozen=True)
class ScorerSpec:
    """How tokens are ranked at the end of prefill (see ``evolkv.scorers``): a registered scorer's name, its
    observation window and pooling kernel, and its own parameters (``{"sinks": 4}``; JSON only when set)."""

    name: str = "snapkv"
    window: int = 8
    kernel: int = 5
    params: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        from evolkv.scorers import SCORERS

        if self.name not in SCORERS:
            raise ConfigError(f"unknown scorer {self.name!r}; known: {', '.join(sorted(SCORERS))}")
        if self.window < 1 or self.kernel < 1 or self.kernel % 2 == 0:
            raise ConfigError("scorer window must be >= 1 and kernel an odd number >= 1")
        params = self.params.items() if isinstance(self.params, dict) else self.params
        object.__setattr__(self, "params", tuple(sorted((str(k), v) for k, v in params)))
        own = {f.name for f in fields(SCORERS[self.name])} - {"window", "kernel"}
        unknown = sorted({k for k, _ in self.params} - own)
        if unknown:
            raise ConfigError(f"scorer {self.name!r} has no parameter {', '.join(map(repr, unknown))}; "
                              f"its parameters: {', '.join(sorted(own)) or 'none'}")

    def build(self):
        """The scorer object this spec names."""
        from evolkv.scorers import SCORERS

        return SCORERS[self.name](window=self.window, kernel=self.kernel, **dict(self.params))

    @property
    def key(self) -> str:
        """Identifies one ranking: equal keys rank every sample the same."""
        own = "".join(f":{k}={v:g}" for k, v in self.params)
        return f"{self.name}:{self.window}:{self.kernel}{own}"

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "window": self.window, "kernel": self.kernel}
        if self.params:
            data["params"] = dict(self.params)
        return data


@dataclass(frozen=True)
class LayerSpec:
    """One layer's share of the budget, its KV-head split and its storage precision."""

    budget: float
    heads: tuple[float, ...] | None = None
    k_bits: int = 16
    v_bits: int = 16
    group_size: int = 32
    residual: int = 0
    evicted_bits: int = 0  # MiKV: tokens past the budget kept at K{b}V{b} (8, 4 or 2) instead of dropped (0)
    quantizer: str = "kivi"  # evolkv.quantizers: how entries below 16 bits are stored and read
    scorer: ScorerSpec | None = None  # this layer's own token scorer (``--scorers``); None: the config's
    # per KV head (k_bits, v_bits) (``--mode quant|joint --per-head``); None: every head at (k_bits, v_bits).
    # When set, k_bits/v_bits are the widest of them; heads at one pair are written as that pair, not here
    head_bits: tuple[tuple[int, int], ...] | None = None

    def __post_init__(self) -> None:
        if self.head_bits is not None:
            try:
                pairs = tuple((int(k), int(v)) for k, v in self.head_bits)
            except (TypeError, ValueError):
                raise ConfigError(f"head_bits must list one [k_bits, v_bits] pair per KV head, got "
                                  f"{self.head_bits!r}") from None
            for k, v in pairs:
                if k not in ALLOWED_BITS or v not in ALLOWED_BITS:
                    raise ConfigError(f"head_bits pair [{k}, {v}] is not two of {ALLOWED_BITS}")
            if not pairs:
                raise ConfigError("head_bits must list one [k_bits, v_bits] pair per KV head")
            if len(set(pairs)) == 1:  # one pair for every head: the layer's own precision
                object.__setattr__(self, "k_bits", pairs[0][0])
                object.__setattr__(self, "v_bits", pairs[0][1])
                pairs = None
            else:
                object.__setattr__(self, "k_bits", max(k for k, _ in pairs))
                object.__setattr__(self, "v_bits", max(v for _, v in pairs))
            object.__setattr__(self, "head_bits", pairs)
        if not math.isfinite(self.budget) or self.budget < 0:
            raise ConfigError(f"layer budget must be a finite number >= 0, got {self.budget!r}")
        if self.heads is not None:
            heads = tuple(float(h) for h in self.heads)
            object.__setattr__(self, "heads", heads)
            if any(h < 0 or not math.isfinite(h) for h in heads) or abs(sum(heads) - 1.0) > 1e-6:
                raise ConfigError(f"head shares must be >= 0 and sum to 1, got {list(heads)}")
        for name in ("k_bits", "v_bits"):
            if getattr(self, name) not in ALLOWED_BITS:
                raise ConfigError(f"{name}={getattr(self, name)} is not one of {ALLOWED_BITS}")
        if self.group_size not in ALLOWED_GROUPS:
            raise ConfigError(f"group_size={self.group_size} is not one of {ALLOWED_GROUPS}")
        if self.residual < 0:
            raise ConfigError(f"residual window must be >= 0, got {self.residual}")
        from evolkv.quantizers import QUANTIZERS

        if self.quantizer not in QUANTIZERS:
            raise ConfigError(f"unknown quantizer {self.quantizer!r}; known: {', '.join(sorted(QUANTIZERS))}")
        if self.evicted_bits not in EVICTED_BITS:
            raise ConfigError(f"evicted_bits={self.evicted_bits} is not one of {EVICTED_BITS} (0 = drop them)")

    @property
    def quantized(self) -> bool:
        """Some entries of the layer are stored below 16 bits (in some head, with ``head_bits``)."""
        if self.head_bits is not None:
            return any(k < 16 or v < 16 for k, v in self.head_bits)
        return self.k_bits < 16 or self.v_bits < 16

    def head_pairs(self, heads: int) -> tuple[tuple[int, int], ...]:
        """(k_bits, v_bits) of each of the layer's ``heads`` KV heads."""
        return self.head_bits if self.head_bits is not None else ((self.k_bits, self.v_bits),) * heads

    def head_spec(self, head: int) -> LayerSpec:
        """This layer as KV head ``head`` stores it: its own (k_bits, v_bits), one pair for the whole spec."""
        if self.head_bits is None:
            return self
        k, v = self.head_bits[head]
        return replace(self, k_bits=k, v_bits=v, head_bits=None)

    def packed_groups(self, heads: int) -> list[tuple[tuple[int, ...] | None, LayerSpec]]:
        """The layer's packed parts: (KV heads, or None for all of them, the spec they are packed by), one per
        precision below 16 bits; heads at 16 bits are in none."""
        if self.head_bits is None:
            return [(None, self)] if self.quantized else []
        groups: dict[tuple[int, int], list[int]] = {}
        for h, pair in enumerate(self.head_bits):
            if pair != (16, 16):
                groups.setdefault(pair, []).append(h)
        return [(tuple(members), self.head_spec(members[0])) for members in groups.values()]

    @property
    def precision(self) -> str:
        """``K4V2``-style name of the layer's key/value precision (``K16V16`` is full precision), ``K4V2+r16``
        when its 16 top-ranked entries stay at full precision; per head ``K4V4/K2V2/K16V16``."""
        name = f"K{self.k_bits}V{self.v_bits}"
        if self.head_bits is not None:
            name = "/".join(f"K{k}V{v}" for k, v in self.head_bits)
        name = f"{name}+r{self.residual}" if self.quantized and self.residual else name
        return f"{name}+e{self.evicted_bits}" if self.evicted_bits else name


_LAYER_FIELDS = fields(LayerSpec)


def _layer_dict(layer: LayerSpec) -> dict[str, Any]:
    data = {f.name: getattr(layer, f.name) for f in _LAYER_FIELDS}  # flat fields: no deep copy (asdict's)
    data["heads"] = None if layer.heads is None else list(layer.heads)
    if not layer.evicted_bits:  # absent unless used: configs (and their hashes) from before MiKV are unchanged
        del data["evicted_bits"]
    if layer.quantizer == "kivi":  # the same for the quantizer: absent when it is the default, KIVI
        del data["quantizer"]
    if layer.scorer is None:  # and for a layer's own scorer: absent when the layer uses the config's
        del data["scorer"]
    else:
        data["scorer"] = layer.scorer.to_dict()
    if layer.head_bits is None:  # and per-head precisions: absent unless the heads differ
        del data["head_bits"]
    else:
        data["head_bits"] = [list(pair) for pair in layer.head_bits]
    return data


@dataclass(frozen=True)
class KVConfig:
    """A full compression config for one model: the unit the search optimises, stores and exports."""

    model: ModelSpec
    budget: Budget
    scorer: ScorerSpec
    layers: tuple[LayerSpec, ...]
    provenance: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    # a per-prompt allocator (evolkv.allocators) that redistributes the layers' total at the end of prefill
    # from every layer's ranking; None: the layers' budgets as written
    allocation: str | None = None
    # with an allocation: the layers' budgets and head splits are searched priors. ``prior``: each layer and KV
    # head's planned tokens, relative to the mean, weigh its scores in the allocator; ``static``: the share of
    # each head's planned tokens it keeps before the allocator spends the rest. Neither (the default): the
    # layers give only the total, as every per-prompt method defines it
    prior: bool = False
    static: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        if len(self.layers) != self.model.num_layers:
            raise ConfigError(f"config has {len(self.layers)} layers but the model spec has {self.model.num_layers}")
        if self.allocation is not None and self.allocation not in ALLOCATIONS:
            raise ConfigError(f"unknown allocation {self.allocation!r}; known: {', '.join(ALLOCATIONS)}")
        if not 0.0 <= self.static <= 1.0:
            raise ConfigError(f"config field 'static' is {self.static}: a share of the planned tokens, in [0, 1]")
        if (self.prior or self.static) and self.allocation is None:
            raise ConfigError("config fields 'prior' and 'static' shape a per-prompt 'allocation'; this config has none")
        for i, layer in enumerate(self.layers):
            if layer.heads is not None and len(layer.heads) != self.model.num_kv_heads:
                raise ConfigError(f"layer {i} splits over {len(layer.heads)} heads, the model has "
                                  f"{self.model.num_kv_heads} KV heads")
            if layer.head_bits is not None and len(layer.head_bits) != self.model.num_kv_heads:
                raise ConfigError(f"layer {i} gives precisions to {len(layer.head_bits)} heads, the model has "
                                  f"{self.model.num_kv_heads} KV heads")
            if self.budget.kind == "fraction" and layer.budget > 1.0 + 1e-9:
                raise ConfigError(f"layer {i} keeps {layer.budget:.3g} of the context (more than all of it)")

    @property
    def mean_budget(self) -> float:
        """Average layer budget, in the config budget's unit."""
        return sum(layer.budget for layer in self.layers) / len(self.layers)

    @property
    def label(self) -> str:
        return str(self.provenance.get("label", "config"))

    def check_fits(self, spec: ModelSpec) -> None:
        """Raise ``ConfigError`` naming the difference if this config was made for another architecture."""
        mine = self.model
        if mine.fingerprint == spec.fingerprint:
            return
        for attr in ("num_layers", "num_kv_heads", "num_q_heads", "head_dim", "model_type", "sliding_window",
                     "layer_types"):
            if getattr(mine, attr) != getattr(spec, attr):
                raise ConfigError(f"config is for {mine.name} ({attr}={getattr(mine, attr)}) but the model "
                                  f"{spec.name} has {attr}={getattr(spec, attr)}")
        raise ConfigError(f"config fingerprint {mine.fingerprint} does not match model {spec.name}")

    def check_named(self, spec: ModelSpec) -> None:
        """``check_fits``, and the model's name: a config searched on one model is refused on another of the same
        architecture (its budgets were fitted to that model's attention), unless the names agree (a path and an
        alias agree on their last part)."""
        self.check_fits(spec)
        if _short_name(self.model.name) != _short_name(spec.name):
            raise ConfigError(f"config is for {self.model.name}, not {spec.name} (the same architecture): load "
                              f"{self.model.name}, or set the config's model.name to {spec.name} to apply it anyway")

    def scorer_of(self, layer: int) -> ScorerSpec:
        """The scorer that ranks ``layer``'s tokens: the layer's own, else the config's."""
        return self.layers[layer].scorer or self.scorer

    def scorers(self) -> list[ScorerSpec]:
        """Every scorer the config ranks with, the config's first, each once."""
        found = [self.scorer] + [layer.scorer for layer in self.layers if layer.scorer is not None]
        return list({spec.key: spec for spec in found}.values())

    def with_provenance(self, **items: Any) -> KVConfig:
        return replace(self, provenance={**self.provenance, **items})

    # -- JSON ---------------------------------------------------------------------------------------------
    def to_dict(self, provenance: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "schema": SCHEMA_POLICY if self.prior or self.static else SCHEMA,
            "model": self.model.to_dict(),
            "budget": str(self.budget),
            "scorer": self.scorer.to_dict(),
            "layers": [_layer_dict(layer) for layer in self.layers],
        }
        if self.allocation is not None:  # absent unless set: older configs hash the same
            data["allocation"] = self.allocation
        if self.prior:
            data["prior"] = True
        if self.static:
            data["static"] = self.static
        if provenance:
            data["provenance"] = self.provenance
        return data

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def hash(self) -> str:
        """Content hash over everything but provenance (candidates are deduplicated by it); computed once
        per object (a config is frozen)."""
        cached = self.__dict__.get("_hash")
        if cached is None:
            cached = self._content_hash()
            object.__setattr__(self, "_hash", cached)
        return cached

    def stored_dict(self) -> dict[str, Any]:
        """``to_dict(provenance=False)``, built once per object: what the store keeps of a candidate (do not
        mutate it; ``to_dict`` gives a fresh one)."""
        cached = self.__dict__.get("_stored")
        if cached is None:
            cached = self.to_dict(provenance=False)
            object.__setattr__(self, "_stored", cached)
        return cached

    def _content_hash(self) -> str:
        canonical = dict(self.stored_dict())
        canonical["layers"] = [{**layer, "budget": round(layer["budget"], 9),
                                "heads": None if layer["heads"] is None else [round(h, 9) for h in layer["heads"]]}
                               for layer in canonical["layers"]]
        return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()[:24]

    @classmethod
    def from_dict(cls, data: Any) -> KVConfig:
        """Parse and validate a config object; anything wrong with it raises ``ConfigError`` naming the field."""
        if not isinstance(data, dict):
            raise ConfigError("config JSON must be an object")
        if data.get("schema") not in SCHEMAS:
            raise ConfigError(f"config schema is {data.get('schema')!r}, expected one of {', '.join(SCHEMAS)}")
        try:
            _known(data, _TOP_FIELDS, "config")
            layers = data["layers"]
            if not isinstance(layers, list) or not all(isinstance(layer, dict) for layer in layers):
                raise ConfigError("config field 'layers' must be a list of objects")
            specs = tuple(_layer_from_dict(layer, i) for i, layer in enumerate(layers))
            model, scorer = data["model"], data.get("scorer", {})
            if not isinstance(model, dict) or not isinstance(scorer, dict):
                raise ConfigError("config fields 'model' and 'scorer' must be objects")
            _known(model, {f.name for f in fields(ModelSpec)} | {"fingerprint"}, "model")
            _known(scorer, {f.name for f in fields(ScorerSpec)}, "scorer")
            provenance = data.get("provenance") or {}
            if not isinstance(provenance, dict):
                raise ConfigError("config field 'provenance' must be an object")
            allocation = data.get("allocation")
            if allocation is not None and not isinstance(allocation, str):
                raise ConfigError("config field 'allocation' must be a string or null")
            prior, static = data.get("prior", False), data.get("static", 0.0)
            if not isinstance(prior, bool) or isinstance(static, bool) or not isinstance(static, (int, float)):
                raise ConfigError("config fields 'prior' (true or false) and 'static' (a number) are malformed")
            cfg = cls(model=ModelSpec.from_dict(model), budget=Budget.parse(data["budget"]),
                      scorer=ScorerSpec(**scorer), layers=specs, provenance=dict(provenance), allocation=allocation,
                      prior=prior, static=float(static))
        except KeyError as e:
            raise ConfigError(f"config JSON lacks the field {e.args[0]!r}") from e
        except (TypeError, ValueError, AttributeError, ArithmeticError) as e:
            raise ConfigError(f"config JSON has a malformed field: {str(e).splitlines()[0][:200]}") from e
        cfg._check_mean()
        return cfg

    def _check_mean(self) -> None:
        """The layers must spend what ``budget`` says (a config agrees with itself)."""
        mean, want = self.mean_budget, self.budget.value
        if abs(mean - want) > 1e-3 * want + 1e-9:
            unit = (lambda v: f"{v * 100:.4g}%") if self.budget.kind == "fraction" else (lambda v: f"{v:.4g} tokens")
            raise ConfigError(f"config field 'budget' says {self.budget} but its layers keep {unit(mean)} on "
                              "average: fix 'budget' or the layers' 'budget' values")

    @classmethod
    def from_json(cls, text: str) -> KVConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"config is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from e
        except RecursionError:
            raise ConfigError("config JSON is nested too deeply to be a config") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | Path) -> KVConfig:
        try:
            raw = Path(path).read_bytes()
        except OSError as e:
            raise ConfigError(f"cannot read config {path}: {e.strerror}") from e
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"config {path} is not UTF-8 text (byte {e.start}): is it a JSON file?") from None
        return cls.from_json(text)

    def save(self, path: str | Path) -> None:
        try:
            Path(path).write_text(self.to_json() + "\n")
        except OSError as e:
            raise ConfigError(f"cannot write config {path}: {e.strerror}") from e


ALLOCATIONS = ("globaltopk", "prefixkv", "cake", "dynamickv")  # evolkv.allocators.ALLOCATORS, by name
_TOP_FIELDS = {"schema", "model", "budget", "scorer", "layers", "provenance", "allocation", "prior", "static"}
_INT_FIELDS = ("k_bits", "v_bits", "group_size", "residual", "evicted_bits")


def _short_name(name: str) -> str:
    """A model's name as configs compare it: the last part of a path, without case."""
    return Path(name.rstrip("/\\")).name.lower() or name.lower()


def _known(data: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"{where} has an unknown field {unknown[0]!r} (known: {', '.join(sorted(allowed))})")


def _whole(value: Any) -> bool:
    """A JSON whole number: an int, or a float with no fraction (4.0); never a bool."""
    return not isinstance(value, bool) and (isinstance(value, int) or isinstance(value, float) and value.is_integer())


def _layer_from_dict(layer: dict[str, Any], index: int) -> LayerSpec:
    _known(layer, {f.name for f in fields(LayerSpec)}, f"layer {index}")
    values = dict(layer)
    for name in _INT_FIELDS:  # 4.0 is 4 (many JSON writers emit floats); 4.5 is an error
        value = values.get(name)
        if value is not None and not _whole(value):
            raise ConfigError(f"layer {index} field {name!r} must be a whole number, not {value!r}")
        if isinstance(value, float):
            values[name] = int(value)
    budget = values.get("budget")
    if isinstance(budget, bool) or not isinstance(budget, (int, float)):
        raise ConfigError(f"layer {index} field 'budget' must be a number, not {budget!r}")
    heads = values.get("heads")
    if heads is not None:
        if not isinstance(heads, list) or not all(isinstance(h, (int, float)) and not isinstance(h, bool)
                                                  for h in heads):
            raise ConfigError(f"layer {index} field 'heads' must be a list of numbers or null")
        values["heads"] = tuple(heads)
    head_bits = values.get("head_bits")
    if head_bits is not None:
        ok = isinstance(head_bits, list) and all(
            isinstance(pair, list) and len(pair) == 2 and all(map(_whole, pair)) for pair in head_bits)
        if not ok:
            raise ConfigError(f"layer {index} field 'head_bits' must be a list of [k_bits, v_bits] pairs or null")
        values["head_bits"] = tuple((int(k), int(v)) for k, v in head_bits)
    scorer = values.get("scorer")
    if scorer is not None:
        if not isinstance(scorer, dict):
            raise ConfigError(f"layer {index} field 'scorer' must be an object or null")
        _known(scorer, {f.name for f in fields(ScorerSpec)}, f"layer {index} scorer")
        values["scorer"] = ScorerSpec(**scorer)
    return LayerSpec(**values)


def uniform_config(model: ModelSpec, budget: Budget, scorer: ScorerSpec | None = None,
                   **layer_fields: Any) -> KVConfig:
    """Every layer keeps the target budget, split evenly over KV heads."""
    heads = tuple([1.0 / model.num_kv_heads] * model.num_kv_heads)
    layer = LayerSpec(budget=budget.value, heads=heads, **layer_fields)
    return KVConfig(model, budget, scorer or ScorerSpec(), tuple([layer] * model.num_layers))
