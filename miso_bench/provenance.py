"""What a result depends on besides its config and data: the code version, the hardware and
the process.

``code_version()`` names the code that produced a run: the git commit of the checkout (with a
hash of uncommitted changes, if any) or the installed version, and the versions of the
libraries whose numerics the results depend on. It is recorded with every run and is part of
what makes a run resumable: a rerun after the code changed starts a new run instead of mixing
folds computed by two versions.

``hardware_tags()`` names the CPU a run computed on: its model and the vector instructions
torch's kernels use (``cpu_capability``: e.g. AVX2, AVX512). Float training is not bit-stable
across them (kernels sum in other orders), so the same code, config and seed can train a
chip model to other weights on another CPU; the tags say which CPU a run's numbers are from.
"""

from __future__ import annotations

import hashlib
import os
import platform
import socket
import subprocess
import time
from functools import cache
from importlib import metadata
from pathlib import Path

from .version import __version__

__all__ = [
    "code_version",
    "cpu_info",
    "git_commit",
    "hardware_tags",
    "library_versions",
    "process_alive",
    "process_identity",
]

#: Libraries whose versions can change a result.
KEY_LIBRARIES = (
    "numpy",
    "scipy",
    "pandas",
    "scikit-learn",
    "xgboost",
    "torch",
    "torchvision",
    "torchgeo",
    "rasterio",
)


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


@cache
def git_commit() -> str:
    """The checkout's commit, ``-dirty+<hash of the diff>`` when the package has uncommitted
    changes; ``unknown`` outside a git checkout.

    Read once per process: the code a process runs is the code it imported, so a checkout
    edited while a long sweep runs does not relabel the sweep's later runs with code they did
    not run."""
    commit = (_git("rev-parse", "HEAD") or "").strip()
    if not commit:
        return "unknown"
    diff = _git("diff", "HEAD", "--", str(Path(__file__).resolve().parent))
    if diff:
        return f"{commit}-dirty+{hashlib.sha256(diff.encode()).hexdigest()[:8]}"
    return commit


@cache
def library_versions() -> dict[str, str]:
    """Installed versions of :data:`KEY_LIBRARIES` (``missing`` when not installed)."""
    out = {}
    for name in KEY_LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


def code_version() -> str:
    """One string naming the code: miso-bench version and commit, and key library versions."""
    libs = ",".join(f"{k}={v}" for k, v in library_versions().items())
    return f"miso-bench={__version__};commit={git_commit()};{libs}"


@cache
def cpu_info() -> dict[str, str]:
    """The first processor's fields of Linux's ``/proc/cpuinfo`` (``model name``, ``cpu
    family``, ``model``, ``flags``, ...), read once; empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor's block only
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def _cpu_name() -> str:
    info = cpu_info()
    name = info.get("model name") or platform.processor() or platform.machine() or "unknown"
    # Vendors' names can be as vague as "AMD EPYC": family and model tell generations apart.
    detail = [f"{k} {info[k]}" for k in ("cpu family", "model") if info.get(k)]
    return f"{name} ({', '.join(detail)})" if detail else name


@cache
def hardware_tags() -> dict[str, str]:
    """What computed a run: ``cpu`` (model name, family and model number) and
    ``cpu_capability`` (the vector instructions torch's CPU kernels use here)."""
    try:
        import torch

        capability = str(torch.backends.cpu.get_cpu_capability())
    except (ImportError, AttributeError, RuntimeError):
        capability = "unknown"
    return {"cpu": _cpu_name(), "cpu_capability": capability}


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def process_identity() -> dict[str, str]:
    """Tags that identify this process: host, pid and start time."""
    pid = os.getpid()
    return {
        "host": socket.gethostname(),
        "pid": str(pid),
        "pid_start": _start_time(pid) or "",
        "heartbeat": f"{time.time():.0f}",
    }


def process_alive(tags: dict[str, str], stale_s: float = 180.0) -> bool:
    """Whether the process that wrote ``tags`` (see :func:`process_identity`) still runs.

    On this host: its pid exists with the same start time. On another host: its heartbeat
    tag is newer than ``stale_s`` seconds.
    """
    if tags.get("host") == socket.gethostname() and tags.get("pid", "").isdigit():
        pid = int(tags["pid"])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # exists, owned by someone else
            return True
        started = _start_time(pid)
        return not (started and tags.get("pid_start") and started != tags["pid_start"])
    try:
        return time.time() - float(tags.get("heartbeat", "0")) < stale_s
    except ValueError:
        return False
