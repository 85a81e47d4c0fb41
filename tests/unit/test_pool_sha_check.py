"""The pool's sha256 check is strict: exactly 64 lowercase hex characters, nothing before or after."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from splitinfer.errors import InvalidArgument
from splitinfer.pool.store import BlobStore, check_sha

GOOD = hashlib.sha256(b"x").hexdigest()


@pytest.mark.parametrize(
    "bad",
    [GOOD + "\n", GOOD + "\r\n", "\n" + GOOD, GOOD.upper(), GOOD[:-1], GOOD + "0", " " + GOOD, "../" + GOOD[3:], ""],
)
def test_only_a_bare_lowercase_sha256_is_accepted(bad: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        check_sha(bad)
    assert len(str(refused.value)) < 200


def test_a_trailing_newline_names_no_blob(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    sha, _ = store.put([b"x"])
    assert check_sha(GOOD) == GOOD and store.has(sha)
    with pytest.raises(InvalidArgument):
        store.has(sha + "\n")
    with pytest.raises(InvalidArgument):
        store.put([b"x"], expected_sha256=sha + "\n")
