"""The part reader of STOW keeps the instance's first bytes and finds where encapsulated pixel
data ends however the body is cut into chunks (a delimiter may straddle two)."""

from __future__ import annotations

import random

import pytest

from emr_hub.imaging.headers import SEQUENCE_END
from emr_hub.imaging.stow import Capture

DATA = random.Random(1).randbytes(5000) + SEQUENCE_END + b"x" * 300 + SEQUENCE_END + b"tail" * 9


@pytest.mark.parametrize("size", [1, 3, 7, 8, 9, 100, 5003, 5005, 10**6])
def test_capture_passes_everything_and_finds_the_last_delimiter(size: int) -> None:
    capture = Capture([DATA[i : i + size] for i in range(0, len(DATA), size)], 100)
    assert b"".join(capture) == DATA
    assert capture.prefix == DATA[:100]
    assert capture.sequence_end == DATA.rfind(SEQUENCE_END) + len(SEQUENCE_END)


def test_no_delimiter_no_end() -> None:
    capture = Capture([b"a" * 50, b"b" * 50], 10)
    assert b"".join(capture) == b"a" * 50 + b"b" * 50
    assert capture.sequence_end is None
