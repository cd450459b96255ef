"""Prefill once, score many.

Compression happens at the end of prefill, so the prefill of a sample is the same for every candidate.
``prepare`` runs it once per sample and keeps each layer's keys, values and each scorer's ranking per KV
head. ``score`` then builds, for a batch of candidates, their compressed caches by gathering a prefix of
the ranking per head, and runs one batched forward of the continuation tokens over them:

    objective = mean over answer tokens of KL(full-cache distribution || candidate distribution)

The caches and the attention are those of ``evolkv.runtime``, so a candidate scores exactly what
``model.generate`` produces with the same config applied.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from evolkv.config import Budget, KVConfig, LayerSpec, ModelSpec, ScorerSpec, uniform_config
from evolkv.devices import is_out_of_memory
from evolkv.errors import ConfigError, EvolKVError, TaskError
from evolkv.evaluators.tasks import Sample, own_metric
from evolkv.models import max_positions
from evolkv.kernels.packed import PackedKV
from evolkv.press import LayerPlan, Plan, Press, Ranking, pack_evicted, pack_kept
from evolkv.evaluators.gathered import GatheredLayer
from evolkv.runtime import CompressedCache, PrefillPolicy, attach

LEAD_IN = 4  # extra greedy tokens allowed before the answer ("the 82699")


@dataclass
class Prepared:
    """One prefilled sample: everything a candidate's score needs, computed once."""

    sample: Sample
    length: int  # T, tokens prefilled
    keys: list[torch.Tensor]  # per layer [1, H_kv, T, D]
    values: list[torch.Tensor]
    orders: dict[str, list[torch.Tensor]]  # scorer -> per layer [1, H_kv, T] int32
    sorted_scores: dict[str, list[torch.Tensor]]
    feed: torch.Tensor  # [F] continuation tokens fed over the compressed cache
    targets: torch.Tensor  # [A] tokens predicted by the last A positions of the feed
    answer_tokens: int  # greedy tokens to decode for exact match
    first_token: int | None  # query-aware: the token the (uncompressed) prefill predicts
    ref_logprobs: torch.Tensor | None = None  # [A, V] full-cache log-probabilities
    stats: list[torch.Tensor] | None = None  # per layer [1, 2]: attention dispersion and shift (allocators)
    # (scorer, layer, k, v, group, residual, quantizer) -> packed prefill; ("evicted", ...) -> (order, packed)
    packed: dict[tuple, PackedKV | tuple[torch.Tensor, PackedKV]] = field(default_factory=dict)

    def packed_layer(self, scorer: str, layer: int, spec: LayerSpec, residual: int,
                     heads: tuple[int, ...] | None = None) -> PackedKV:
        """This layer's prefill from rank ``residual`` on, packed as ``spec`` says (precision, group,
        quantizer) in the scorer's ranking order, of every KV head or of ``heads`` (made once, then shared)."""
        key = (scorer, layer, spec.k_bits, spec.v_bits, spec.group_size, residual, spec.quantizer)
        if key not in self.packed:
            self.packed[key] = pack_kept(self.keys[layer][0], self.values[layer][0], self.orders[scorer][layer][0],
                                         spec, min(residual, self.length))
        if heads is None:
            return self.packed[key]
        if (*key, heads) not in self.packed:
            rows = torch.tensor(heads, device=self.keys[layer].device)
            self.packed[(*key, heads)] = self.packed[key].select(rows)
        return self.packed[(*key, heads)]

    def evicted_layer(self, scorer: str, layer: int, spec: LayerSpec, capacity: int
                      ) -> tuple[torch.Tensor, PackedKV]:
        """MiKV: this layer's ranking with its ``capacity`` valid ranks reversed [1, H_kv, T], and the prefill
        packed at the layer's tier precision in that order (made once, then shared by every candidate that
        keeps it)."""
        key = ("evicted", scorer, layer, capacity, spec.evicted_bits, spec.group_size, spec.quantizer)
        if key not in self.packed:
            tail, packed = pack_evicted(self.keys[layer][0], self.values[layer][0], self.orders[scorer][layer][0],
                                        spec, capacity)
            self.packed[key] = (tail[None], packed)
        return self.packed[key]


@dataclass
class Score:
    """What one candidate achieved on a set of samples (lower objective is better)."""

    objective: float
    metrics: dict[str, float] = field(default_factory=dict)
    status: str = "ok"
    reason: str = ""
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class _Capture(PrefillPolicy):
    """Keep the full prefill, and record each scorer's ranking per layer and head (the press's ``rank``);
    scorers that replay the context (KVzip) rank once their replay pass has run, after the prefill."""

    def __init__(self, press: Press, tokenizer=None) -> None:
        self.press, self.tokenizer = press, tokenizer
        num_layers = press.model.num_layers
        self.orders: dict[str, list] = {key: [None] * num_layers for key in press.scorers}
        self.sorted: dict[str, list] = {key: [None] * num_layers for key in press.scorers}
        self.stats: list = [None] * num_layers
        self.prefill: list[dict] = [{} for _ in range(num_layers)]  # each layer's stats, out_proj and rotary

    def on_prefill(self, cache, layer_idx, query, scaling, sliding_window, out_proj=None, rotary=None):
        layer = cache.layers[layer_idx]
        ranked = self.press.rank(layer_idx, query, layer.keys, layer.values, scaling, out_proj=out_proj,
                                 rotary=rotary)
        self._record(layer_idx, ranked)
        if self.press.replays:
            stats = self.press.measure(ranked, layer_idx, query, layer.keys, layer.values, scaling)
            self.stats[layer_idx] = stats
            self.prefill[layer_idx] = dict(stats=stats, out_proj=out_proj, rotary=rotary)

    def after_prefill(self, model, cache, input_ids):
        if not self.press.replays or self.orders[next(iter(self.press.replays))][0] is not None:  # replayed
            return
        from evolkv import replay

        for i, rankings in enumerate(replay.rank_layers(self.press, model, cache, input_ids, self.tokenizer,
                                                        self.prefill)):
            self._record(i, rankings)

    def _record(self, layer_idx: int, rankings: dict[str, Ranking]) -> None:
        for key, ranking in rankings.items():
            self.orders[key][layer_idx], self.sorted[key][layer_idx] = ranking.order, ranking.sorted_scores
            self.stats[layer_idx] = ranking.stats


class Evaluator:
    """Scores compression configs of one model on prefilled samples."""

    def __init__(self, model, tokenizer, spec: ModelSpec, scorers: Sequence[ScorerSpec] = (ScorerSpec(),),
                 query_aware: bool = False, batch_size: int = 8, objective: str = "kl") -> None:
        self.model, self.tokenizer, self.spec = model, tokenizer, spec
        self.objective = objective  # what Score.objective is: kl | nll | task (see OBJECTIVES)
        self.scorers = {s.key: s for s in scorers}
        self.press = Press(spec, self.scorers.values(), stats=True)  # every scorer's ranking; allocator stats
        self.query_aware = query_aware
        self.batch_size = batch_size
        self.device = next(model.parameters()).device
        self._tokenized: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}  # by sample uid, to prefill
        # the reference keeps every token, so any prepared ranking serves it: use the run's own scorer
        self.full = uniform_config(spec, Budget("fraction", 1.0), next(iter(self.scorers.values())))

    def add_scorers(self, scorers: Sequence[ScorerSpec]) -> None:
        """Also rank by ``scorers`` in samples prepared from now on (a config or baseline that needs them)."""
        for s in scorers:
            self.scorers.setdefault(s.key, s)
        self.press = Press(self.spec, self.scorers.values(), stats=True)

    # -- prefill once ---------------------------------------------------------------------------------------
    def _encode(self, text: str, special: bool) -> torch.Tensor:
        return torch.tensor(self.tokenizer(text, add_special_tokens=special).input_ids, dtype=torch.long)

    @torch.no_grad()
    def prepare(self, samples: Sequence[Sample], progress: Callable[[], None] | None = None) -> list[Prepared]:
        prepared = []
        for sample in samples:
            prepared.append(self._park(self._prepare_one(sample)))
            if progress:
                progress()
        return prepared

    # -- long contexts: prefills kept in host memory once the GPU runs short ------------------------------------
    def _park(self, prep: Prepared) -> Prepared:
        """Leave ``prep``'s prefill on the GPU while it has room for scoring and the next prefill; else move it
        to (pinned) host memory, from where ``_resident`` brings it back for each use. A 32k-token sample of an
        8B GQA model holds 4 GiB of keys and values: 32 of them do not fit one card."""
        if self.device.type != "cuda":
            return prep
        sample_bytes = sum(t.numel() * t.element_size() for t in [*prep.keys, *prep.values])
        free, _ = torch.cuda.mem_get_info(self.device)
        free += torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
        if free > 2 * sample_bytes + GPU_RESERVE:
            return prep
        return _moved(prep, _to_host)

    def _resident(self, prep: Prepared) -> Prepared:
        """``prep`` with its prefill on this evaluator's device (a temporary copy for a parked sample)."""
        if prep.keys[0].device == self.device:
            return prep
        return _moved(prep, lambda t: t.to(self.device, non_blocking=True))

    def _tokens(self, sample: Sample) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(context, question, answer) token ids; those ``check_lengths`` made are kept for the prefill."""
        if sample.uid not in self._tokenized:
            self._tokenized[sample.uid] = (self._encode(sample.context, special=True),
                                           self._encode("\n" + sample.question, special=False),
                                           self._encode(" " + sample.answer.strip(), special=False))
        return self._tokenized[sample.uid]

    def check_lengths(self, samples: Sequence[Sample]) -> None:
        """Refuse, before any prefill, a sample longer than the model's positions (a task file's, say)."""
        limit = max_positions(self.model.config)
        for sample in samples if limit else ():
            total = sum(part.numel() for part in self._tokens(sample))
            if total > limit:
                raise TaskError(f"sample {sample.uid} is {total} tokens, longer than the model's context of {limit}: "
                                "shorten it (or --length) or use a longer-context model")

    def _prepare_one(self, sample: Sample) -> Prepared:
        self.check_lengths([sample])
        context, question, answer = self._tokens(sample)
        self._tokenized.pop(sample.uid, None)  # prefilled once: its ids are not needed again
        prompt = (torch.cat([context, question]) if self.query_aware else context).to(self.device)
        policy = _Capture(self.press, self.tokenizer)
        cache = CompressedCache(self.spec.num_layers, policy)
        with attach(self.model):
            out = self.model(prompt[None].to(self.device), cache=cache, logits_to_keep=1)
        first = int(out.logits[0, -1].argmax()) if self.query_aware else None
        feed = answer[:-1] if self.query_aware else torch.cat([question, answer[:-1]])
        targets = answer[1:] if self.query_aware else answer
        prepared = Prepared(
            sample=sample, length=prompt.numel(),
            keys=[layer.keys for layer in cache.layers], values=[layer.values for layer in cache.layers],
            orders=policy.orders, sorted_scores=policy.sorted, stats=policy.stats, feed=feed.to(self.device),
            targets=targets.to(self.device), answer_tokens=answer.numel(), first_token=first)
        if targets.numel():
            prepared.ref_logprobs = self._logprobs([self.full], prepared)[0]
        return prepared

    # -- score many -----------------------------------------------------------------------------------------
    def _plans(self, cfg: KVConfig, prep: Prepared) -> list[LayerPlan]:
        """The press's plan of ``cfg`` on ``prep``, layer by layer (tokens kept per head, and their tiers)."""
        keys = [cfg.scorer_of(i).key for i in range(self.spec.num_layers)]
        stats = prep.stats or [None] * self.spec.num_layers
        return Plan(cfg, prep.length).layers([Ranking(prep.orders[key][i], prep.sorted_scores[key][i], stats[i])
                                              for i, key in enumerate(keys)])

    def head_counts(self, configs: Sequence[KVConfig], prepared: Sequence[Prepared]) -> list[list[list[float]]]:
        """Per config, the tokens each KV head of each layer keeps [L][H_kv], summed over ``prepared``: what a
        per-prompt allocation (AdaKV's split by score, ``globaltopk``) gives each head, from the rankings alone
        (no forward)."""
        sums = [torch.zeros(self.spec.num_layers, self.spec.num_kv_heads, dtype=torch.float64) for _ in configs]
        for prep in prepared:
            for total, cfg in zip(sums, configs):  # [L, H_kv], one copy to the host per sample and config
                total += torch.stack([plan.counts.sum(0) for plan in self._plans(cfg, prep)]).double().cpu()
        return [total.tolist() for total in sums]

    def _cache(self, configs: Sequence[KVConfig], prep: Prepared) -> CompressedCache:
        for cfg in configs:
            for spec in cfg.scorers():
                if spec.key not in prep.orders:
                    raise ConfigError(f"scorer {spec.key} was not among the evaluator's scorers "
                                      f"({', '.join(prep.orders)})")
        cache = CompressedCache(self.spec.num_layers)
        per_config = [self._plans(cfg, prep) for cfg in configs]
        for i in range(self.spec.num_layers):
            plans = [p[i] for p in per_config]
            counts = torch.cat([p.counts.to(self.device) for p in plans])  # [C, H_kv]
            layer_keys = [cfg.scorer_of(i).key for cfg in configs]
            if len(set(layer_keys)) == 1:  # one ranking shared by every candidate
                orders = prep.orders[layer_keys[0]][i]  # [1, H_kv, T]
            else:
                orders = torch.cat([prep.orders[key][i] for key in layer_keys])  # [C, H_kv, T]
            packs = defaultdict(list)  # candidates of one scorer and storage read one packed prefill
            tiers = defaultdict(list)  # MiKV candidates of one scorer and tier storage read one packed copy
            for c, (cfg, plan) in enumerate(zip(configs, plans)):
                layer = plan.spec
                for heads, spec in layer.packed_groups(self.spec.num_kv_heads):  # per-head precisions: several
                    packs[(layer_keys[c], spec.k_bits, spec.v_bits, spec.group_size, spec.quantizer,
                           plan.residual, heads)].append((c, spec))
                if plan.evicted is not None:
                    tiers[(layer_keys[c], layer.evicted_bits, layer.group_size, layer.quantizer,
                           plan.capacity)].append((c, layer))
            groups = [(torch.tensor([c for c, _ in rows], device=self.device),
                       prep.packed_layer(key[0], i, rows[0][1], key[5], key[6]), key[5],
                       None if key[6] is None else torch.tensor(key[6], device=self.device))
                      for key, rows in packs.items()]
            evicted = []
            for key, rows in tiers.items():
                tail, packed = prep.evicted_layer(key[0], i, rows[0][1], key[-1])
                evicted.append((torch.tensor([c for c, _ in rows], device=self.device), tail,
                                torch.cat([plans[c].evicted for c, _ in rows]).to(self.device), packed))
            cache.layers[i] = GatheredLayer(prep.keys[i][0], prep.values[i][0], orders, counts, prep.length, groups,
                                            evicted)
        return cache

    @torch.no_grad()
    def _logprobs(self, configs: Sequence[KVConfig], prep: Prepared) -> torch.Tensor:
        """Teacher-forced log-probabilities of the targets' positions: [C, A, V]."""
        cache = self._cache(configs, prep)
        feed = prep.feed[None].expand(len(configs), -1)
        with attach(self.model):
            logits = self.model(feed, cache=cache, logits_to_keep=prep.targets.numel()).logits
        return torch.log_softmax(logits.float(), dim=-1)

    def score(self, configs: Sequence[KVConfig], prepared: Sequence[Prepared],
              progress: Callable[[int], None] | None = None) -> list[Score]:
        """Score every config on every prepared sample; a failing batch is retried one config at a time."""
        return aggregate(self.score_samples(configs, prepared, progress), self.objective)

    def score_samples(self, configs: Sequence[KVConfig], prepared: Sequence[Prepared],
                      progress: Callable[[int], None] | None = None) -> SampleScores:
        """Per config, every metric's per-sample values in sample order (shards of the samples scored apart
        and concatenated in order aggregate to exactly what one evaluator scoring them all gives)."""
        per_config: list[dict[str, list[float]]] = [defaultdict(list) for _ in configs]
        failures: dict[int, str] = {}
        started = time.perf_counter()
        for prep in prepared:
            if not prep.targets.numel():
                continue
            prep = self._resident(prep)
            for chunk in _chunks(list(range(len(configs))), self.batch_size):
                scored = self._score_chunk([configs[i] for i in chunk], chunk, prep, failures)
                if self.objective == "task" and scored:
                    scored = self._task_losses(configs, scored, prep, failures)
                for index, metrics in scored:
                    for key, value in metrics.items():
                        per_config[index][key].append(value)
                        per_config[index][f"{prep.sample.task}/{key}"].append(value)
            if progress:
                progress(len(configs))
        return SampleScores([dict(m) for m in per_config], failures, time.perf_counter() - started)

    def _score_chunk(self, configs, indices, prep, failures):
        live = [(cfg, i) for cfg, i in zip(configs, indices) if i not in failures]
        if not live:
            return []
        try:
            logprobs = self._logprobs([cfg for cfg, _ in live], prep)  # [C, A, V]
            ref = prep.ref_logprobs  # [A, V]
            probs = ref.exp()
            # one candidate at a time: a [C, A, V] temporary is 0.4 GiB at 8 x 50 answer tokens of a 262k vocabulary
            kl = torch.stack([(probs * (ref - one)).sum(-1).clamp(min=0).mean(-1) for one in logprobs])  # [C]
        except (RuntimeError, ValueError, EvolKVError) as e:  # OOM, a shape a kernel refuses, a config error
            if len(live) == 1:
                if is_out_of_memory(e):  # the card's state, not the config's: the run stops, resumable
                    raise
                failures[live[0][1]] = _reason(e)
                return []
            return [r for cfg, i in live for r in self._score_chunk([cfg], [i], prep, failures)]
        nll = -logprobs.gather(-1, prep.targets[None, :, None].expand(len(live), -1, 1)).squeeze(-1).mean(-1)
        agree = (logprobs.argmax(-1) == ref.argmax(-1)[None]).float().mean(-1)
        results = []
        for j, (_, i) in enumerate(live):
            if not torch.isfinite(kl[j]):
                failures[i] = "non-finite objective (NaN/inf logits)"
                continue
            value = float(kl[j])
            results.append((i, {"kl": value, "logkl": math.log(value + LOG_KL_FLOOR), "nll": float(nll[j]),
                                "top1": float(agree[j])}))
        return results

    def _task_losses(self, configs, scored, prep, failures):
        """``--objective task``: add each scored config's task loss on this sample, 1 - the task's metric of
        its greedy answer (edit similarity for code, RULER's string match otherwise), as EvolKV scores."""
        indices = [i for i, _ in scored]
        try:
            texts = self._greedy([configs[i] for i in indices], prep)
        except (RuntimeError, ValueError, EvolKVError) as e:
            if is_out_of_memory(e):
                raise
            for i in indices:
                failures[i] = _reason(e)
            return []
        metric = own_metric(prep.sample.task)
        return [(i, {**metrics, "task": 1.0 - _task_metrics(text, prep.sample.answer)[metric]})
                for (i, metrics), text in zip(scored, texts)]

    # -- exact match ----------------------------------------------------------------------------------------
    def exact_match(self, configs: Sequence[KVConfig], prepared: Sequence[Prepared],
                    progress: Callable[[int], None] | None = None) -> list[dict[str, float]]:
        """Greedy-decode each sample under each config; a hit when the gold answer appears in the first
        ``answer + LEAD_IN`` tokens (RULER's string match). Accuracy overall and per task, and the edit
        similarity of the first generated line ("sim"); "per_sample": each sample's own metric (``summarise``)."""
        return [summarise(h) for h in self.exact_match_samples(configs, prepared, progress)]

    @torch.no_grad()
    def exact_match_samples(self, configs: Sequence[KVConfig], prepared: Sequence[Prepared],
                            progress: Callable[[int], None] | None = None) -> list[dict[str, list[float]]]:
        """Per config: "em" (and "<task>/em") -> per-sample hits (1.0 / 0.0), and "sim" (and "<task>/sim"):
        the edit similarity of the first generated line to the answer (difflib's ratio, the LCC / RepoBench
        metric), in sample order; "own": each sample's own metric (``tasks.own_metric``: "sim" for code, "em"
        otherwise)."""
        hits: list[dict[str, list[float]]] = [defaultdict(list) for _ in configs]
        # a greedy step reads every weight once whatever the batch: all configs of a sample decode together, up
        # to EM_BATCHES forwards' worth (a run's winner and its ten baselines: one batch, not 8 + 3)
        size = self.batch_size * EM_BATCHES
        for prep in prepared:
            prep = self._resident(prep)
            for chunk in _chunks(list(range(len(configs))), size):
                texts = self._greedy([configs[i] for i in chunk], prep)
                for i, text in zip(chunk, texts):
                    values = _task_metrics(text, prep.sample.answer)
                    for metric, value in values.items():
                        hits[i][metric].append(value)
                        hits[i][f"{prep.sample.task}/{metric}"].append(value)
                    hits[i]["own"].append(values[own_metric(prep.sample.task)])
            if progress:
                progress(1)
        return [dict(h) for h in hits]

    def _greedy(self, configs: Sequence[KVConfig], prep: Prepared) -> list[str]:
        count = len(configs)
        cache = self._cache(configs, prep)
        if self.query_aware:
            pending = torch.full((count, 1), prep.first_token, device=self.device)
            tokens = [pending]
        else:
            question = prep.feed[: prep.feed.numel() - (prep.answer_tokens - 1)]
            pending, tokens = question[None].expand(count, -1), []
        with attach(self.model):
            while sum(t.shape[1] for t in tokens) < prep.answer_tokens + LEAD_IN:
                logits = self.model(pending, cache=cache, logits_to_keep=1).logits[:, -1]
                pending = logits.argmax(-1, keepdim=True)  # [C, 1]
                tokens.append(pending)
        generated = torch.cat(tokens, dim=1)
        return self.tokenizer.batch_decode(generated, skip_special_tokens=True)


EM_BATCHES = 4  # exact match decodes up to this many --batch-size of configs at once (Evaluator.exact_match_samples)


@dataclass
class SampleScores:
    """What ``Evaluator.score_samples`` measured, before averaging over samples."""

    values: list[dict[str, list[float]]]  # per config: metric -> per-sample values
    failures: dict[int, str]  # config index -> reason
    seconds: float = 0.0

    @staticmethod
    def concat(parts: Sequence[SampleScores], positions: Sequence[Sequence[int]] | None = None) -> SampleScores:
        """Shards of the samples joined back. ``aggregate``'s exactly rounded means make the order of the
        per-sample lists irrelevant to every mean; ``positions`` (each shard's samples' places in the split) puts
        the lists of the whole split's metrics back in the split's order, so configs compare sample by sample."""
        values = [defaultdict(list) for _ in parts[0].values] if parts else []
        failures: dict[int, str] = {}
        for merged_index, merged in enumerate(values):
            for key in {k for part in parts for k in part.values[merged_index]}:
                lists = [part.values[merged_index].get(key, []) for part in parts]
                merged[key] = (_placed(lists, positions) if positions is not None and "/" not in key
                               else [v for one in lists for v in one])
        for part in parts:
            for index, reason in part.failures.items():
                failures.setdefault(index, reason)
        return SampleScores([dict(v) for v in values], failures, max((p.seconds for p in parts), default=0.0))


def _placed(lists: list[list[float]], positions: Sequence[Sequence[int]]) -> list[float]:
    """Shards' per-sample lists put at their samples' places in the split; as they come where a shard skipped a
    sample (a sample with no answer tokens), so the places no longer match."""
    if any(len(one) != len(where) for one, where in zip(lists, positions)):
        return [v for one in lists for v in one]
    out = [0.0] * sum(map(len, lists))
    for one, where in zip(lists, positions):
        for value, place in zip(one, where):
            out[place] = value
    return out


def _reason(error: Exception) -> str:
    """Why a config failed to score, in one line."""
    return f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"


def _task_metrics(text: str, answer: str) -> dict[str, float]:
    """A greedy answer against the gold one: "em", a hit when the gold answer appears in it (RULER's string
    match), and "sim", the edit similarity of its first line (difflib's ratio, the LCC / RepoBench metric)."""
    gold = answer.strip()
    lines = text.strip().splitlines()
    return {"em": float(gold.lower() in text.lower()),
            "sim": difflib.SequenceMatcher(None, lines[0].strip() if lines else "", gold).ratio()}


# "logkl", a sample's log(KL + LOG_KL_FLOOR): its mean over samples is the log of a geometric mean, so the
# difference of two configs' means on the same samples is the mean of their per-sample log ratios (each sample
# counts once, however large its KL). Samples that both configs keep far below the floor count as ties.
LOG_KL_FLOOR = 0.01
OBJECTIVES = ("kl", "nll", "task")  # what a Score's objective is: KL to the full cache, gold NLL, 1 - task metric


def summarise(hits: dict[str, list[float]]) -> dict[str, float | list[float]]:
    """One config's per-sample greedy-answer figures (``Evaluator.exact_match_samples``) -> their means, and
    "per_sample": each sample's own metric in sample order, so that configs scored on the same samples can be compared
    sample by sample (``evaluators.paired``)."""
    return {**{key: mean(v) for key, v in hits.items() if key != "own"}, "per_sample": list(hits.get("own", []))}


def mean(values: Sequence[float]) -> float:
    """The mean of ``values`` through an exactly rounded sum: the same float for any order of the values."""
    return math.fsum(values) / len(values)


def aggregate(scores: SampleScores, objective: str = "kl") -> list[Score]:
    """Mean of every metric over the samples; the objective is the mean of ``objective`` (KL by default).
    Means are exactly rounded (``mean``), so shards of the samples joined in any order give the same bits."""
    elapsed = scores.seconds / max(len(scores.values), 1)
    out = []
    for i, per_metric in enumerate(scores.values):
        if i in scores.failures:
            out.append(Score(math.inf, status="failed", reason=scores.failures[i], duration_s=elapsed))
            continue
        if not per_metric.get("kl"):  # no sample had an answer to score: nothing was measured
            out.append(Score(math.inf, status="failed", reason="no sample has answer tokens to score",
                             duration_s=elapsed))
            continue
        metrics = {key: mean(v) for key, v in per_metric.items()}
        if objective not in metrics:
            out.append(Score(math.inf, status="failed", reason=f"no {objective} was measured", duration_s=elapsed))
            continue
        metrics["per_sample"] = list(per_metric[objective])  # paired comparisons (search.selection)
        out.append(Score(metrics[objective], metrics, duration_s=elapsed))
    return out


GPU_RESERVE = 6 * 2**30  # bytes kept free beside two samples' prefills: the batched forwards of scoring


def _to_host(tensor: torch.Tensor) -> torch.Tensor:
    try:
        return torch.empty_like(tensor, device="cpu", pin_memory=True).copy_(tensor)
    except RuntimeError:  # pinned memory exhausted: pageable (slower copies back)
        return tensor.to("cpu")


def _moved(prep: Prepared, move: Callable[[torch.Tensor], torch.Tensor]) -> Prepared:
    """``prep`` with its per-layer prefill tensors moved by ``move`` (packed copies are rebuilt where used)."""
    return dataclasses.replace(
        prep, keys=[move(t) for t in prep.keys], values=[move(t) for t in prep.values],
        orders={name: [move(t) for t in layers] for name, layers in prep.orders.items()},
        sorted_scores={name: [move(t) for t in layers] for name, layers in prep.sorted_scores.items()},
        stats=None if prep.stats is None else [None if t is None else move(t) for t in prep.stats], packed={})


def _chunks(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]
