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
