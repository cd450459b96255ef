import json

import pytest

from evolkv.errors import TaskError
from evolkv.evaluators.tasks import TASKS, from_jsonl, load_tasks, synthetic


@pytest.mark.parametrize("task", list(TASKS))
def test_synthetic_tasks_are_seeded_and_splits_differ(task, loaded):
    tok = loaded["llama"].tokenizer
    a = synthetic(task, 3, 300, 0, "search", tok)
    assert a == synthetic(task, 3, 300, 0, "search", tok)
    held = synthetic(task, 3, 300, 0, "heldout", tok)
    assert {s.context for s in a}.isdisjoint({s.context for s in held})
    for s in a:
        parts = s.answer.replace(" and ", ", ").split(", ")
        if task != "code":  # code: the answer is the line after the context
            assert all(part in s.context for part in parts)
        if task in ("passkey", "multikey", "kvretrieval", "vartrack", "multivalue", "multiquery", "niah_number"):
            assert all(part.isdigit() for part in parts)
        if task == "niah_uuid":
            assert len(s.answer) == 36 and s.answer.count("-") == 4


def test_aggregation_answers_are_the_most_frequent_words(loaded):
    import collections

    for task in ("cwe", "fwe"):
        for s in synthetic(task, 3, 400, 0, "search", loaded["llama"].tokenizer):
            words = [w for w in s.context.split() if w.isalpha() and w.islower()]
            top = [w for w, _ in collections.Counter(words).most_common(3)]
            assert s.answer.split(", ") == top


def test_length_is_roughly_tokens(loaded):
    tok = loaded["llama"].tokenizer
    sample = synthetic("passkey", 1, 600, 0, "search", tok)[0]
    assert 450 <= len(tok(sample.context).input_ids) <= 800


def test_jsonl_loader_splits_and_errors(tmp_path):
    path = tmp_path / "mine.jsonl"
    rows = [{"context": f"c{i}", "question": "q?", "answers": [str(i)]} for i in range(20)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    search, held = from_jsonl(path, "search"), from_jsonl(path, "heldout")
    valid = from_jsonl(path, "validation")
    assert len(search) + len(valid) + len(held) == 20 and search and held and valid
    path.write_text('{"context": "x"}\n')
    with pytest.raises(TaskError, match="mine.jsonl:1"):
        from_jsonl(path, "search")


def test_unknown_task(loaded):
    with pytest.raises(TaskError):
        load_tasks(["nope"], 1, 100, 0, "search", loaded["llama"].tokenizer)


def test_prose_and_code_tasks_come_from_text_that_ships_with_python():
    import random

    from evolkv.evaluators.tasks import KINDS, TASKS, code, prose

    context, question, answer = prose(random.Random(0), 30)
    assert f"moved to {answer}." in context and question.endswith("moved to") and " to work as a " in answer
    assert len(context) >= 30 * 80 and context.count("moved to") == 4
    context, question, answer = code(random.Random(0), 30)
    assert len(answer) >= 12 and not answer.startswith("#") and question.strip() == ""
    assert "\n" in context and set(KINDS) == set(TASKS)


def test_presets_expand_in_order_once():
    from evolkv.evaluators.tasks import PRESETS, expand

    assert expand(["mix"]) == PRESETS["mix"] == ["passkey", "vartrack", "prose", "code"]
    assert expand(["code", "mix", "cwe"]) == ["code", "passkey", "vartrack", "prose", "cwe"]
    assert {KIND for KIND in expand(["ruler"])} <= set(TASKS)


def _rows(n, **fields):
    return [{key: (value(i) if callable(value) else value) for key, value in fields.items()} for i in range(n)]


def test_hf_datasets_on_disk_in_every_layout(tmp_path):
    """LongBench (context/input/answers), RULER (input/outputs), GSM8K (question/answer '#### n') and SQuAD
    (answers.text) rows load from a save_to_disk folder, a folder of split files, one .json or .parquet file."""
    import datasets

    from evolkv.evaluators.tasks import from_hf

    longbench = _rows(30, context=lambda i: f"doc {i}", input=lambda i: f"q{i}?", answers=lambda i: [f"a{i}", "x"])
    datasets.DatasetDict({"test": datasets.Dataset.from_list(longbench)}).save_to_disk(tmp_path / "lb")
    parts = {split: from_hf(f"hf:{tmp_path / 'lb'}:test", split) for split in ("search", "validation", "heldout")}
    assert sum(map(len, parts.values())) == 30 and all(parts.values())
    first = parts["search"][0]
    number = int(first.uid.rsplit(":", 1)[1])
    assert (first.context, first.question, first.answer) == (f"doc {number}", f"q{number}?", f"a{number}")
    assert first.task == "lb-test" and from_hf(f"hf:{tmp_path / 'lb'}", "search") == parts["search"]  # one split

    ruler = tmp_path / "ruler"
    ruler.mkdir()
    (ruler / "validation.jsonl").write_text("\n".join(json.dumps(r) for r in _rows(
        20, input=lambda i: f"haystack {i} ... what is the number?", outputs=lambda i: [str(i)])))
    got = from_hf(f"hf:{ruler}:validation", "heldout")
    assert got and all(s.context == "" and s.answer in s.question for s in got)

    gsm = tmp_path / "gsm8k.json"
    gsm.write_text(json.dumps(_rows(20, question=lambda i: f"{i}+1?", answer=lambda i: f"so {i}+1\n#### {i + 1}")))
    assert all(s.answer == str(int(s.question.split("+")[0]) + 1) for s in from_hf(f"hf:{gsm}", "search"))

    squad = tmp_path / "squad.parquet"
    datasets.Dataset.from_list(_rows(20, context="c", question=lambda i: f"q{i}",
                                     answers=lambda i: {"text": [f"t{i}"], "answer_start": [0]})).to_parquet(squad)
    assert all(s.answer == "t" + s.question[1:] for s in from_hf(f"hf:{squad}", "search"))

    renamed = tmp_path / "mine.jsonl"
    renamed.write_text("\n".join(json.dumps(r) for r in _rows(20, doc="d", ask="k?", gold=lambda i: f"g{i}")))
    got = from_hf(f"hf:{renamed}:context=doc,question=ask,answers=gold", "search")
    assert got and all(s.context == "d" and s.answer.startswith("g") for s in got)


@pytest.mark.parametrize("spec, words", [
    ("hf:{tmp}/missing", "does not exist"),
    ("hf:{tmp}/lb", "choose a split"),
    ("hf:{tmp}/odd.jsonl", "no answers column"),
    ("hf:{tmp}/odd.jsonl:answers=nope", "no column 'nope'"),
    ("hf:{tmp}/odd.jsonl:colour=x", "FIELD=COLUMN"),
    ("hf:{tmp}/latin.jsonl", "not UTF-8"),
    ("hf:{tmp}/empty.jsonl", "is empty"),
])
def test_hf_bad_input_is_one_task_error(spec, words, tmp_path):
    import datasets

    from evolkv.evaluators.tasks import from_hf

    rows = _rows(4, context="c", question="q", answers=["a"])
    datasets.DatasetDict({"a": datasets.Dataset.from_list(rows), "b": datasets.Dataset.from_list(rows)}).save_to_disk(
        tmp_path / "lb")
    (tmp_path / "odd.jsonl").write_text(json.dumps({"question": "q", "reply": "r"}) + "\n")
    (tmp_path / "latin.jsonl").write_bytes(b'{"question": "caf\xe9", "answers": ["a"]}\n')
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(TaskError, match=words):
        from_hf(spec.format(tmp=tmp_path), "search")


@pytest.mark.parametrize("task", list(TASKS))
def test_every_task_builds_at_the_smallest_length(task, loaded):
    """--length 16 (the CLI's minimum) gives one filler or none: every task still builds its samples."""
    samples = synthetic(task, 2, 16, 0, "search", loaded["llama"].tokenizer)
    assert len(samples) == 2 and all(s.answer for s in samples)


def test_a_one_line_jsonl_file_passes_the_check_whatever_split_it_lands_in(tmp_path):
    from evolkv.evaluators.tasks import check

    for i in range(4):
        path = tmp_path / f"one{i}.jsonl"
        path.write_text(json.dumps({"context": f"c{i}", "question": "q", "answers": ["a"]}) + "\n")
        check(str(path))
        assert len(from_jsonl(path, None)) == 1
