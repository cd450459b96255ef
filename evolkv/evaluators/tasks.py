"""Long-context tasks: synthetic ones generated from a seed (no download) and the user's JSONL files.

Every task has two splits drawn from disjoint random streams: ``search`` (what the optimiser sees) and
``heldout`` (what winners are re-scored on). A sample is a context, a question asked after it, and the
answer a model should continue with.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from evolkv.errors import TaskError

SPLITS = ("search", "heldout")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
WORDS = ("apple", "river", "mountain", "garden", "silver", "orange", "window", "castle", "forest", "rocket",
         "pencil", "tiger", "ocean", "planet", "candle", "mirror", "bridge", "violin", "desert", "comet")


@dataclass(frozen=True)
class Sample:
    task: str
    context: str
    question: str
    answer: str
    uid: str


def _number(rng: random.Random) -> str:
    return str(rng.randint(10000, 99999))


def _haystack(rng: random.Random, needles: list[str], fillers: int, header: str = "") -> str:
    parts = [FILLER] * fillers
    for needle in needles:
        parts.insert(rng.randint(0, len(parts)), needle)
    return header + "".join(parts)


def passkey(rng: random.Random, fillers: int) -> tuple[str, str, str]:
    key = _number(rng)
    needle = f"The pass key is {key}. Remember it. {key} is the pass key. "
    header = "There is important info hidden inside a lot of irrelevant text. Find it and memorize it. "
    return _haystack(rng, [needle], fillers, header), "What is the pass key? The pass key is", key


def multikey(rng: random.Random, fillers: int) -> tuple[str, str, str]:
    names = rng.sample(WORDS, 4)
    values = {name: _number(rng) for name in names}
    needles = [f"The special magic number for {n} is {values[n]}. " for n in names]
    asked = rng.choice(names)
    question = f"What is the special magic number for {asked}? The special magic number for {asked} is"
    return _haystack(rng, needles, fillers), question, values[asked]


def kvretrieval(rng: random.Random, fillers: int) -> tuple[str, str, str]:
    pairs = {word: _number(rng) for word in rng.sample(WORDS, min(len(WORDS), 4 + fillers // 3))}
    context = "".join(f"The number for {k} is {v}. " for k, v in pairs.items())
    asked = rng.choice(list(pairs))
    return context, f"What is the number for {asked}? The number for {asked} is", pairs[asked]


def vartrack(rng: random.Random, fillers: int) -> tuple[str, str, str]:
    value, names = _number(rng), rng.sample(["XQK", "BZT", "MNO", "PLA", "RUV", "WEY", "HJD"], 3)
    chain = [f"VAR {names[0]} = {value}. "] + [f"VAR {names[i]} = VAR {names[i - 1]}. " for i in (1, 2)]
    parts = [FILLER] * fillers
    for offset, at in enumerate(sorted(rng.sample(range(fillers + 1), 3))):
        parts.insert(at + offset, chain[offset])
    return "".join(parts), f"What is the value of VAR {names[2]}? VAR {names[2]} =", value


TASKS: dict[str, Callable[[random.Random, int], tuple[str, str, str]]] = {
    "passkey": passkey, "multikey": multikey, "kvretrieval": kvretrieval, "vartrack": vartrack,
}


def synthetic(task: str, count: int, length: int, seed: int, split: str, tokenizer) -> list[Sample]:
    """``count`` samples of ``task`` whose prompt is about ``length`` tokens for ``tokenizer``."""
    if task not in TASKS:
        raise TaskError(f"unknown task {task!r}; known: {', '.join(TASKS)} (or a path to a .jsonl file)")
    if split not in SPLITS:
        raise TaskError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    per_filler = max(1, len(tokenizer(FILLER, add_special_tokens=False).input_ids))
    fillers = max(1, length // per_filler)
    rng = random.Random(f"{task}:{seed}:{split}")
    samples = []
    for i in range(count):
        context, question, answer = TASKS[task](rng, fillers)
        samples.append(Sample(task, context, question, answer, f"{task}:{seed}:{split}:{i}"))
    return samples


def from_jsonl(path: str | Path, split: str, count: int | None = None) -> list[Sample]:
    """Samples of a ``{"context", "question", "answers"}`` file; a stable hash of each line picks its split."""
    path = Path(path)
    try:
        lines = path.read_bytes().decode("utf-8").splitlines()
    except OSError as e:
        raise TaskError(f"cannot read task file {path}: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise TaskError(f"task file {path} is not UTF-8 text (byte {e.start}): save it as UTF-8 JSONL") from None
    if not any(line.strip() for line in lines):
        raise TaskError(f"task file {path} is empty: one JSON object per line with context, question, answers")
    samples = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            answers = row["answers"]
            answer = answers[0] if isinstance(answers, list) else answers
            sample = Sample(path.stem, str(row["context"]), str(row["question"]), str(answer), f"{path.stem}:{number}")
        except (json.JSONDecodeError, KeyError, IndexError, TypeError, RecursionError) as e:
            raise TaskError(f"{path}:{number}: expected JSON with context, question, answers "
                            f"({str(e)[:120]})") from None
        if not sample.answer.strip():  # nothing to measure: KL 0 and a perfect exact match would be a lie
            raise TaskError(f"{path}:{number}: the answer is empty; every sample needs a non-empty answer")
        bucket = int(hashlib.sha256(line.encode()).hexdigest(), 16) % 2
        if SPLITS[bucket] == split:
            samples.append(sample)
    if not samples and lines:
        raise TaskError(f"{path} has no samples in the {split} split")
    return samples[:count] if count else samples


def load_tasks(names: list[str], count: int, length: int, seed: int, split: str, tokenizer) -> list[Sample]:
    """Samples of several tasks (synthetic names or ``.jsonl`` paths), ``count`` of each."""
    samples: list[Sample] = []
    for name in names:
        if name.endswith(".jsonl"):
            samples += from_jsonl(name, split, count)
        else:
            samples += synthetic(name, count, length, seed, split, tokenizer)
    return samples
