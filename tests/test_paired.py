"""evaluators.paired: a task-metric gap between two configs, sample by sample."""

import pytest

from evolkv.evaluators.paired import compare, sign_test


def test_sign_test_is_the_exact_two_sided_binomial():
    assert sign_test(0, 0) == 1.0
    assert sign_test(5, 0) == pytest.approx(2 / 32)
    assert sign_test(8, 13) == sign_test(13, 8) == pytest.approx(0.3833, abs=1e-4)


def test_compare_counts_wins_and_brackets_the_gap():
    a = [1.0, 0.5, 0.5, 0.0, 1.0, 0.25]
    b = [0.0, 0.5, 0.25, 0.5, 1.0, 0.0]
    c = compare(a, b)
    assert c["gap"] == pytest.approx(sum(x - y for x, y in zip(a, b)) / 6)
    assert (c["wins"], c["losses"], c["ties"]) == (3, 1, 2)
    assert c["low"] <= c["gap"] <= c["high"]
    assert compare(a, a)["low"] == compare(a, a)["high"] == 0.0
    with pytest.raises(ValueError, match="equally long"):
        compare(a, b[:3])
