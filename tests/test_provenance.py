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


def test_hardware_tags_name_the_cpu_and_the_instructions_torch_uses():
    import torch

    tags = provenance.hardware_tags()
    assert tags["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert tags["cpu"] and tags["cpu"] != "unknown"


def test_a_vague_cpu_name_gets_its_family_and_model(monkeypatch, tmp_path):
    """Two generations of one vendor's server CPU can share a name ("AMD EPYC") and differ
    in their instructions: the tag tells them apart."""
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nmodel name\t: AMD EPYC\ncpu family\t: 25\nmodel\t\t: 1\n"
        "flags\t\t: fpu avx2\n\nprocessor\t: 1\nmodel name\t: Other\n"
    )
    real_path = provenance.Path

    def fake_path(arg):
        return info if arg == "/proc/cpuinfo" else real_path(arg)

    provenance.cpu_info.cache_clear()
    monkeypatch.setattr(provenance, "Path", fake_path)
    try:
        assert provenance.cpu_info()["flags"] == "fpu avx2"
        assert provenance._cpu_name() == "AMD EPYC (cpu family 25, model 1)"
    finally:
        monkeypatch.undo()
        provenance.cpu_info.cache_clear()
