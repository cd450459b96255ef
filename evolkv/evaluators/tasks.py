"""Long-context tasks: synthetic ones generated from a seed (no download), the user's JSONL files and datasets
saved on local disk (``hf:PATH``; never downloaded).

Every task has three splits drawn from disjoint random streams: ``search`` (what the optimiser fits),
``validation`` (what the winner is chosen on, among the best search candidates and the baselines) and
``heldout`` (only reported). A sample is a context, a question asked after it, and the
answer a model should continue with.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import stat
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from evolkv.errors import TaskError

SPLITS = ("search", "validation", "heldout")
MAX_TASK_MB = 512  # a task file larger than this is refused (EVOLKV_MAX_TASK_MB raises it): it is read whole
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
    places = sorted(rng.sample(range(fillers + 1), 3)) if fillers >= 2 else [fillers] * 3  # short: at the end
    for offset, at in enumerate(places):
        parts.insert(at + offset, chain[offset])
    return "".join(parts), f"What is the value of VAR {names[2]}? VAR {names[2]} =", value


@functools.cache
def _prose() -> list[str]:
    """Sentences of English prose that ship with Python: the reference pages ``pydoc`` shows
    (``pydoc_data.topics``, about 460k characters of the language reference), code blocks left out."""
    from pydoc_data.topics import topics

    sentences = []
    for name in sorted(topics):
        for paragraph in topics[name].split("\n\n"):
            text = " ".join(paragraph.split())
            if len(text) > 80 and not paragraph.startswith(" ") and text.count("(") < 4:
                sentences += [part.strip() + " " for part in re.split(r"(?<=[.!?])\s+", text) if len(part) > 30]
    return sentences


def _prose_parts(rng: random.Random, fillers: int) -> list[str]:
    """Consecutive prose sentences from a random start, about ``fillers`` filler sentences' worth of text."""
    sentences, budget = _prose(), fillers * len(FILLER)
    start, parts, size = rng.randrange(len(sentences)), [], 0
    while size < budget:
        parts.append(sentences[(start + len(parts)) % len(sentences)])
        size += len(parts[-1])
    return parts


@functools.cache
def _vocabulary() -> list[str]:
    """The words of ``_prose`` (4-9 letters, a few function words left out), sorted: cwe's word pool."""
    words = set(" ".join(_prose()).lower().split()) - set("the a an of to in is and or".split())
    return [w for w in sorted(words) if w.isalpha() and 4 <= len(w) <= 9]


PEOPLE = ("Alice", "Bruno", "Chiara", "Dmitri", "Elena", "Farid", "Greta", "Hiro", "Ines", "Jonas", "Kofi",
          "Lena", "Mateo", "Nadia", "Oskar", "Priya")
CITIES = ("Lisbon", "Oslo", "Nairobi", "Lima", "Hanoi", "Porto", "Quito", "Tbilisi", "Dakar", "Riga", "Cusco",
          "Bergen", "Malmo", "Ghent", "Zagreb", "Leeds")


JOBS = ("baker", "nurse", "pilot", "tailor", "chemist", "gardener", "librarian", "plumber", "violinist",
        "carpenter", "surveyor", "beekeeper")


def prose(rng: random.Random, fillers: int) -> tuple[str, str, str]:
    """Fact look-up in real prose: four "<person> moved to <city> to work as a <job>" facts among Python
    reference sentences. The answer is the city and the job: several tokens, so a query-aware run (whose first
    answer token comes from the uncompressed prefill) still measures the look-up."""
    parts = _prose_parts(rng, fillers)
    people, cities, jobs = rng.sample(PEOPLE, 4), rng.sample(CITIES, 4), rng.sample(JOBS, 4)
    for person, city, job in zip(people, cities, jobs):
        parts.insert(rng.randint(0, len(parts)), f"{person} moved to {city} to work as a {job}. ")
    asked = rng.randrange(4)
    question = f"Where did {people[asked]} move, and for which work? {people[asked]} moved to"
    return "".join(parts), question, f"{cities[asked]} to work as a {jobs[asked]}"


@functools.cache
def _sources() -> list[str]:
    """Python source files of the standard library (they ship with every interpreter), sorted."""
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(str(p) for p in root.glob("*.py") if p.stat().st_size > 4000)


def code(rng: random.Random, fillers: int) -> tuple[str, str, str]:
    """Code completion in the LCC style: the lines of a standard-library module before a line, which is the
    answer (a line of code of at least 12 characters: no comment, no docstring)."""
    budget = fillers * len(FILLER)
    for _ in range(50):
        lines = Path(rng.choice(_sources())).read_text(encoding="utf-8", errors="replace").splitlines()
        in_string, code_lines = False, []
        for line in lines:  # lines of code, not of a docstring
            code_lines.append(not in_string)
            in_string ^= (line.count('"""') + line.count("'''")) % 2 == 1
        candidates = [i for i, line in enumerate(lines) if i > 20 and len(line.strip()) >= 12 and code_lines[i]
                      and not line.strip().startswith(("#", '"', "'", '"""'))]
        if not candidates:
            continue
        target = rng.choice(candidates)
        first, size = target, 0
        while first > 0 and size < budget:
            first -= 1
            size += len(lines[first]) + 1
        if size >= budget // 2:
            indent = lines[target][: len(lines[target]) - len(lines[target].lstrip())]
            # the question is the line's indentation less the space the answer is encoded after
            return "\n".join(lines[first:target]), indent[:-1], lines[target].strip()
    raise TaskError("no standard-library source file is long enough for the code task at this length")


def _prose_haystack(rng: random.Random, fillers: int, needles: list[str]) -> str:
    """About ``fillers`` filler sentences' worth of real prose (Python's reference pages), the needles inserted at
    random sentence boundaries."""
    parts = _prose_parts(rng, fillers)
    for needle in needles:
        parts.insert(rng.randint(0, len(parts)), needle)
    return "".join(parts)


def _niah(kind: str) -> Callable[[random.Random, int], tuple[str, str, str]]:
    """RULER's single needle in a haystack of real prose, its value a number, a word or a UUID."""
    def task(rng: random.Random, fillers: int) -> tuple[str, str, str]:
        key = rng.choice(WORDS)
        if kind == "number":
            value = _number(rng)
        elif kind == "word":
            value = rng.choice(PEOPLE).lower() + rng.choice(CITIES).lower()
        else:
            value = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        needle = f"One of the special magic {kind}s for {key} is: {value}. "
        question = f"What is the special magic {kind} for {key} mentioned in the text? The special magic {kind} is"
        return _prose_haystack(rng, fillers, [needle]), question, value
    task.__name__ = f"niah_{kind}"
    return task


def multivalue(rng: random.Random, fillers: int) -> tuple[str, str, str]:
    """RULER's NIAH multi-value: one key with four values hidden in prose; all four, in the order they appear."""
    key = rng.choice(WORDS)
    values = [_number(rng) for _ in range(4)]
    context = _prose_haystack(rng, fillers, [f"One of the special magic numbers for {key} is {v}. " for v in values])
    ordered = sorted(values, key=context.index)
    question = f"What are all the special magic numbers for {key}? The special magic numbers for {key} are"
    return context, question, ", ".join(ordered)


def multiquery(rng: random.Random, fillers: int) -> tuple[str, str, str]:
    """RULER's NIAH multi-query: four keys hidden in prose, two asked at once."""
    keys = rng.sample(WORDS, 4)
    values = {k: _number(rng) for k in keys}
    context = _prose_haystack(rng, fillers, [f"The special magic number for {k} is {values[k]}. " for k in keys])
    a, b = rng.sample(keys, 2)
    question = f"What are the special magic numbers for {a} and {b}? They are"
    return context, question, f"{values[a]} and {values[b]}"


def cwe(rng: random.Random, fillers: int) -> tuple[str, str, str]:
    """RULER's common-words extraction: a numbered list of words in which three common words repeat many times;
    the answer is those three, most frequent first."""
    chosen = rng.sample(_vocabulary(), 3 + 40)
    common, rare = chosen[:3], chosen[3:]
    words = [w for n, w in zip((12, 10, 8), common) for _ in range(n)]
    while len(words) < fillers * 5:  # an entry "12. word" is ~4 tokens, a filler sentence ~20
        words.append(rng.choice(rare))
    rng.shuffle(words)
    context = "Below is a numbered list of words. " + " ".join(f"{i + 1}. {w}" for i, w in enumerate(words))
    question = "What are the 3 most common words in the list above, most frequent first? Answer:"
    return context, question, ", ".join(common)


def fwe(rng: random.Random, fillers: int) -> tuple[str, str, str]:
    """RULER's frequent-words extraction: coded words drawn from a Zipf distribution; the three most frequent,
    most frequent first."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    codes = ["".join(rng.choice(letters) for _ in range(5)) for _ in range(60)]
    weights = [1.0 / (rank + 1) ** 1.3 for rank in range(len(codes))]
    count = max(30, fillers * len(FILLER) // 12)
    words = rng.choices(codes, weights, k=count)
    top = sorted(set(words), key=lambda w: (-words.count(w), codes.index(w)))[:3]
    context = "Read the following coded text and track the frequency of each coded word. " + " ".join(words)
    question = "What are the three most frequently appeared coded words in the text above? Answer:"
    return context, question, ", ".join(top)


TASKS: dict[str, Callable[[random.Random, int], tuple[str, str, str]]] = {
    "passkey": passkey, "multikey": multikey, "kvretrieval": kvretrieval, "vartrack": vartrack,
    "prose": prose, "code": code, "multivalue": multivalue, "multiquery": multiquery, "cwe": cwe, "fwe": fwe,
    "niah_number": _niah("number"), "niah_word": _niah("word"), "niah_uuid": _niah("uuid"),
}
KINDS = {"niah_number": "needle", "niah_word": "needle", "niah_uuid": "needle", "passkey": "needle",
         "multikey": "needle", "kvretrieval": "needle", "multivalue": "needle", "multiquery": "needle",
         "vartrack": "tracking", "cwe": "aggregation", "fwe": "aggregation", "prose": "prose", "code": "code"}  # task kinds: what leave-one-kind-out transfer holds out


def own_metric(task: str) -> str:
    """A task's own metric among the greedy answers' figures (``evaluator._task_metrics``): edit similarity ("sim")
    for code, string match ("em") otherwise."""
    return "sim" if KINDS.get(task) == "code" else "em"


def task_metric(accuracy: dict[str, float]) -> float:
    """One task-quality number from ``Evaluator.exact_match``'s figures: each task's own metric, averaged over the
    tasks present with equal weight (the overall "em" where no task is named)."""
    keys = [f"{task}/{own_metric(task)}" for task in sorted({key.split("/")[0] for key in accuracy if "/" in key})]
    values = [accuracy[key] for key in keys if key in accuracy]
    return sum(values) / len(values) if values else accuracy.get("em", 0.0)


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


PRESETS = {  # names that stand for several tasks (--tasks mix is the default calibration set: one task a kind)
    "mix": ["passkey", "vartrack", "prose", "code"],
    "ruler": ["niah_number", "niah_word", "niah_uuid", "multikey", "multivalue", "multiquery", "vartrack", "cwe", "fwe"],
}
# hf: datasets: where each Sample field is looked for, in order (LongBench: context/input/answers; RULER:
# input/outputs; GSM8K: question/answer "... #### 42"; SQuAD: context/question/answers.text)
HF_FIELDS = {"context": ("context", "passage", "document", "article"),
             "question": ("input", "question", "query", "prompt", "instruction"),
             "answers": ("answers", "outputs", "answer", "output", "target")}


def expand(names: list[str]) -> list[str]:
    """Task names with the presets (``mix``, ``ruler``) replaced by their tasks, each task once."""
    out: list[str] = []
    for name in names:
        out += PRESETS.get(name, [name])
    return list(dict.fromkeys(out))


def check(name: str) -> None:
    """Raise a TaskError for a task that cannot be loaded (before anything is stored): an unknown name, a
    .jsonl file or hf: dataset that is missing, unreadable or lacks a field."""
    if name.startswith("hf:"):
        _hf_samples(name)
        return
    if name.endswith(".jsonl"):
        from_jsonl(name, None)
        return
    if name in TASKS:
        return
    raise TaskError(f"unknown task {name!r}; known: {', '.join([*TASKS, *PRESETS])}, a .jsonl file or hf:PATH[:SPLIT]")


def _bucket(key: str) -> str:
    """A stable split for one row of a user's data: half held out, a third of the rest validation."""
    digest = int(hashlib.sha256(key.encode()).hexdigest(), 16)
    return "heldout" if digest % 2 else ("validation" if digest // 2 % 3 == 0 else "search")


def from_jsonl(path: str | Path, split: str | None, count: int | None = None) -> list[Sample]:
    """Samples of a ``{"context", "question", "answers"}`` file; a stable hash of each line picks its split:
    half of the lines are held out, a third of the rest validate, the others are searched on (``split``
    None: every line, checked)."""
    path = Path(path)
    lines = _read_text(path).splitlines()
    if not any(line.strip() for line in lines):
        raise TaskError(f"task file {path} is empty: one JSON object per line with context, question, answers")
    samples = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as e:
            raise TaskError(f"{where}: expected JSON with context, question, answers ({str(e)[:120]})") from None
        if not isinstance(row, dict) or not all(key in row for key in ("context", "question", "answers")):
            raise TaskError(f"{where}: expected a JSON object with context, question, answers")
        answers = row["answers"]
        if isinstance(answers, list) and answers and all(isinstance(a, str) for a in answers):
            answer = answers[0]
        elif isinstance(answers, str):
            answer = answers
        else:
            raise TaskError(f"{where}: answers must be a string or a non-empty list of strings, not "
                            f"{json.dumps(answers)[:60]}")
        sample = Sample(path.stem, _string(row["context"], "context", where), _string(row["question"], "question",
                                                                                    where), answer, f"{path.stem}:{number}")
        if not sample.answer.strip():  # nothing to measure: KL 0 and a perfect exact match would be a lie
            raise TaskError(f"{path}:{number}: the answer is empty; every sample needs a non-empty answer")
        if split is None or _bucket(line) == split:
            samples.append(sample)
    if not samples:
        raise TaskError(f"{path} has no samples in the {split} split")
    return samples[:count] if count else samples


def _string(value, field: str, where: str) -> str:
    """A sample's text field as given: a JSON string, never a number, null, a list or an object made into one."""
    if not isinstance(value, str):
        raise TaskError(f"{where}: {field} must be a string, not {json.dumps(value)[:60]}")
    return value


def _regular(path: Path) -> int:
    """The size of ``path`` if it is a regular file under the size cap (symlinks followed); a device, a FIFO or
    a directory is refused before it is opened (reading one would never end, or block)."""
    try:
        info = os.stat(path)
    except OSError as e:
        raise TaskError(f"cannot read task file {path}: {e.strerror}") from e
    if not stat.S_ISREG(info.st_mode):
        raise TaskError(f"task file {path} is not a regular file (a device, FIFO or directory): give a .jsonl file")
    cap = _max_task_bytes()
    if info.st_size > cap:
        raise TaskError(f"task file {path} is {info.st_size / 2**20:.0f} MiB, over the {cap / 2**20:.0f} MiB cap: "
                        "use fewer rows, or set EVOLKV_MAX_TASK_MB higher")
    return info.st_size


def _max_task_bytes() -> int:
    text = os.environ.get("EVOLKV_MAX_TASK_MB", "")
    try:
        mb = float(text) if text else MAX_TASK_MB
    except ValueError:
        raise TaskError(f"EVOLKV_MAX_TASK_MB={text!r} is not a number of MiB") from None
    return int(mb * 2**20)


def _read_text(path: Path) -> str:
    cap = _max_task_bytes()
    _regular(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(cap + 1)  # a file that grew past the cap since the check is still refused
        if len(data) > cap:
            raise TaskError(f"task file {path} is over the {cap / 2**20:.0f} MiB cap: use fewer rows, or set "
                            "EVOLKV_MAX_TASK_MB higher")
        return data.decode("utf-8")
    except OSError as e:
        raise TaskError(f"cannot read task file {path}: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise TaskError(f"task file {path} is not UTF-8 text (byte {e.start}): save it as UTF-8 JSONL") from None


def parse_hf(name: str) -> tuple[Path, str | None, dict[str, str]]:
    """``hf:PATH[:SPLIT][:FIELD=COLUMN,...]`` -> (path, split or None, field -> column overrides)."""
    parts = name.removeprefix("hf:").split(":")
    path, split, mapping = Path(parts[0]).expanduser(), None, {}
    for part in parts[1:]:
        if "=" in part:
            for item in part.split(","):
                field, _, column = item.partition("=")
                if field not in HF_FIELDS or not column:
                    raise TaskError(f"{name}: {item!r} is not FIELD=COLUMN with FIELD one of {', '.join(HF_FIELDS)}")
                mapping[field] = column
        elif part:
            split = part
    if not parts[0]:
        raise TaskError(f"{name}: give a path, hf:PATH[:SPLIT] (a dataset saved on disk; evolkv never downloads)")
    if not path.exists():
        raise TaskError(f"{name}: {path} does not exist (evolkv never downloads: save the dataset first, e.g. "
                        "datasets' save_to_disk, or as .jsonl/.json/.parquet files)")
    return path, split, mapping


def _hf_rows(path: Path, split: str | None, name: str) -> tuple[list[dict], str | None]:
    """(rows, the split read) of a dataset on disk: a ``save_to_disk`` folder, a folder of split files, or one
    file."""
    if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
        try:
            import datasets
        except ImportError:
            raise TaskError(f"{name}: reading a save_to_disk folder needs the datasets package: "
                            "pip install 'evolkv[hf]'") from None
        data = datasets.load_from_disk(str(path))
        if isinstance(data, datasets.DatasetDict):
            if split is None and len(data) == 1:
                split = next(iter(data))
            if split not in data:
                raise TaskError(f"{name}: choose a split, hf:{path}:SPLIT, of {', '.join(data)}")
            data = data[split]
        return [dict(row) for row in data], split
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.suffix in (".jsonl", ".json", ".parquet") and f.is_file()
                       and (split is None or f.name.startswith(split)))
        if not files:
            raise TaskError(f"{name}: no {split + '*' if split else ''}.jsonl, .json or .parquet file under {path}")
        return [row for f in files for row in _file_rows(f, name)], split
    return _file_rows(path, name), split


def _file_rows(path: Path, name: str) -> list[dict]:
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise TaskError(f"{name}: reading parquet needs pyarrow: pip install 'evolkv[hf]'") from None
        _regular(path)
        return pq.read_table(path).to_pylist()
    text = _read_text(path)
    try:
        if path.suffix == ".json" and text.lstrip().startswith("["):
            rows = json.loads(text)
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except (json.JSONDecodeError, RecursionError) as e:
        raise TaskError(f"{path}: not JSON lines ({str(e)[:120]})") from None
    if not rows:
        raise TaskError(f"{path} is empty")
    if not all(isinstance(row, dict) for row in rows):
        raise TaskError(f"{path}: every row must be a JSON object")
    return rows


def _answer(value, where: str) -> str:
    """The first answer of a field: a string, a list of strings' first non-empty one, SQuAD's {"text": [...]},
    GSM8K's text after ####. Anything else (null, a number, a list holding a non-string) is refused."""
    if isinstance(value, dict) and "text" in value:
        value = value["text"]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        value = next((v for v in value if v.strip()), "")
    if not isinstance(value, str):
        raise TaskError(f"{where}: answers must be a string or a list of strings, not {json.dumps(value, default=str)[:60]}")
    return value.rsplit("####", 1)[1].strip() if "####" in value else value


@functools.lru_cache(maxsize=8)
def _hf_samples(name: str) -> list[tuple[Sample, str]]:
    """(sample, its search/validation/held-out split) for every row of an ``hf:`` dataset; read once per process
    (the check before a run and each split's load share it)."""
    path, hf_split, mapping = parse_hf(name)
    rows, hf_split = _hf_rows(path, hf_split, name)
    if not rows:
        raise TaskError(f"{name}: the dataset has no rows")
    columns = set(rows[0])
    fields = {}
    for field, candidates in HF_FIELDS.items():
        column = mapping.get(field) or next((c for c in candidates if c in columns), None)
        if column is None and field != "context":
            raise TaskError(f"{name}: no {field} column (looked for {', '.join(candidates)}; the rows have "
                            f"{', '.join(sorted(columns))}): name it, hf:{path}:{field}=COLUMN")
        if column is not None and column not in columns:
            raise TaskError(f"{name}: no column {column!r}; the rows have {', '.join(sorted(columns))}")
        fields[field] = column
    task = path.stem + (f"-{hf_split}" if hf_split else "")
    out = []
    for number, row in enumerate(rows):
        where = f"{name}: row {number}"
        answer = _answer(row.get(fields["answers"]), where)
        if not answer.strip():
            raise TaskError(f"{where} has an empty answer; every sample needs a non-empty answer")
        context = _string(row.get(fields["context"]), "context", where) if fields["context"] else ""
        sample = Sample(task, context, _string(row.get(fields["question"]), "question", where), answer,
                        f"{task}:{number}")
        out.append((sample, _bucket(json.dumps(row, sort_keys=True, default=str))))
    return out


def from_hf(name: str, split: str, count: int | None = None) -> list[Sample]:
    """Samples of a dataset saved on local disk (``hf:PATH[:SPLIT][:FIELD=COLUMN,...]``), fields found by
    ``HF_FIELDS`` unless named; a stable hash of each row picks its search/validation/held-out split."""
    everything = _hf_samples(name)
    samples = [sample for sample, bucket in everything if bucket == split]
    if not samples:
        raise TaskError(f"{name} has no samples in the {split} split ({len(everything)} rows in all)")
    return samples[:count] if count else samples


def load_tasks(names: list[str], count: int, length: int, seed: int, split: str, tokenizer) -> list[Sample]:
    """Samples of several tasks (synthetic names, presets, ``.jsonl`` paths, ``hf:`` datasets), ``count`` of each."""
    samples: list[Sample] = []
    for name in expand(names):
        if name.startswith("hf:"):
            samples += from_hf(name, split, count)
        elif name.endswith(".jsonl"):
            samples += from_jsonl(name, split, count)
        else:
            samples += synthetic(name, count, length, seed, split, tokenizer)
    return samples
