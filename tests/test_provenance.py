"""What a run records about the code that produced it."""

from __future__ import annotations

from miso_bench import provenance


def test_the_commit_is_read_once_per_process(monkeypatch):
    """A checkout edited while a sweep runs must not relabel the sweep's later runs: the
    process keeps running the code it imported, so it keeps naming that code."""
    calls: list[tuple[str, ...]] = []

    def fake_git(*args: str) -> str | None:
        calls.append(args)
        if args[0] == "rev-parse":
            return "0123abcd\n"
        return next(diffs)  # empty first: the checkout was clean when the process started

    provenance.git_commit.cache_clear()
    monkeypatch.setattr(provenance, "_git", fake_git)
    diffs = iter(["", "diff --git a/x.py b/x.py\n+edited later\n"])
    try:
        first = provenance.git_commit()
        later = provenance.git_commit()  # the checkout now has an uncommitted change
        assert first == later == "0123abcd"
        assert len(calls) == 2  # rev-parse and diff, once
    finally:
        provenance.git_commit.cache_clear()


def test_a_dirty_checkout_is_named_with_its_diff(monkeypatch):
    def fake_git(*args: str) -> str | None:
        return "0123abcd\n" if args[0] == "rev-parse" else "+a change\n"

    provenance.git_commit.cache_clear()
    monkeypatch.setattr(provenance, "_git", fake_git)
    try:
        assert provenance.git_commit().startswith("0123abcd-dirty+")
    finally:
        provenance.git_commit.cache_clear()
