"""`JournalCursor`, the resume path's lookup: the same rows as `Store.find`, mostly without it."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from corral.backends import Reply
from corral.requests import Request
from corral.results import Outcome
from corral.store import JournalCursor, Store


def _outcome(key: str, ok: bool = True) -> Outcome:
    request = Request(index=0, id=key, model="m", key=key)
    if ok:
        return Outcome(request, Reply(text=f"answer {key}", model="m"))
    return Outcome(request, error="boom", error_kind="http")


def _journal(path: Path, keys: list[str], unrelated: int) -> Store:
    """Rows written out of input order, as a run's slots finish them, with rows of another job."""
    store = Store(path)
    written = keys[:]
    rng = random.Random(7)
    for start in range(0, len(written), 300):  # scattered within a window, as a run writes
        window = written[start:start + 300]
        rng.shuffle(window)
        written[start:start + 300] = window
    for i, key in enumerate(written):
        store.record(_outcome(key, ok=i % 13 != 0))
        if i % 7 == 0 and unrelated:
            store.record(_outcome(f"other-{i}"))
            unrelated -= 1
    store.flush()
    return store


@pytest.mark.parametrize("unrelated", [0, 2000])
def test_the_cursor_answers_what_find_answers(tmp_path: Path, unrelated: int, monkeypatch) -> None:
    keys = [f"k{i:05d}" for i in range(6000)]
    store = _journal(tmp_path / "j.db", keys, unrelated)
    asked = keys + ["absent-1", "absent-2"] + keys[:50]   # new keys, and keys asked again
    expected = store.find(asked)
    cursor = JournalCursor(store)
    looked_up: list[str] = []
    find = store.find
    monkeypatch.setattr(store, "find", lambda ks: (looked_up.extend(ks), find(ks))[1])
    got: dict = {}
    for start in range(0, len(asked), 256):
        batch = list(dict.fromkeys(asked[start:start + 256]))
        got.update(cursor.find(batch))
    assert got == expected
    # Nearly every key came from the sequential read: only the absent keys and the repeats
    # (already taken from the buffer) were looked up one by one.
    assert set(looked_up) <= {"absent-1", "absent-2", *keys[:50]}
    assert len(cursor._ahead) <= JournalCursor.KEEP
    store.close()


def test_rows_written_during_the_run_are_left_to_find(tmp_path: Path) -> None:
    store = _journal(tmp_path / "j.db", ["a", "b"], 0)
    cursor = JournalCursor(store)
    store.record(_outcome("c"))
    store.flush()
    assert set(cursor.find(["a", "b", "c"])) == {"a", "b", "c"}
    assert cursor._last <= cursor._end
    store.close()


def test_a_small_buffer_drops_rows_and_looks_them_up_instead(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(JournalCursor, "BLOCK", 64)
    monkeypatch.setattr(JournalCursor, "KEEP", 100)
    keys = [f"k{i:05d}" for i in range(3000)]
    store = _journal(tmp_path / "j.db", keys, 1500)
    cursor = JournalCursor(store)
    got: dict = {}
    for start in range(0, len(keys), 256):
        got.update(cursor.find(keys[start:start + 256]))
        assert len(cursor._ahead) <= 100
    assert got == store.find(keys)
    store.close()
