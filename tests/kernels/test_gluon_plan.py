"""The Gluon decode kernel's split plan (CPU: pure arithmetic): one wave of programs, two an SM, whole rounds (a key
group for each of a program's warps)."""

import pytest

pytest.importorskip("triton")

from evolkv.kernels.gluon_decode import BLOCK, PROGRAMS_PER_SM, plan  # noqa: E402


@pytest.mark.parametrize("length", [1, 127, 300, 4096, 32768, 131072])
@pytest.mark.parametrize("rows", [1, 8, 64, 264, 512])
def test_one_wave_of_whole_blocks(length, rows):
    sms = 132
    splits, split_len = plan(length, rows, sms)
    assert splits >= 1 and split_len % BLOCK == 0
    assert splits * split_len >= length > (splits - 1) * split_len  # every entry in exactly one split, none empty
    assert rows * splits <= max(rows, PROGRAMS_PER_SM * sms)        # one wave unless the rows alone need more
    if splits > 1:
        assert split_len >= BLOCK >= 4 * 128                         # a split keeps a round: a key group a warp


def test_batch_8_at_32k_on_an_h100_takes_4_splits():
    assert plan(32768, 64, 132) == (4, 8192)  # 256 programs: one wave at 2 an SM (was 16 splits, 3.9 waves)


def test_batch_1_at_8k_keeps_the_sms_busy():
    assert plan(8192, 8, 132) == (16, 512)  # 128 programs of one round each: an SM each


def test_an_explicit_count_is_kept():
    assert plan(32768, 64, 132, splits=16) == (16, 2048)
