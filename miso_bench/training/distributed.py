"""Data-parallel training on several devices with PyTorch DDP.

Workers are started by torch.distributed's elastic agent, the launcher behind ``torchrun``
(one process per device on this machine, c10d rendezvous on a free local port). Each worker
joins a process group (NCCL on GPUs, Gloo on CPU), trains its share of every batch, and
gradients are averaged by :class:`~torch.nn.parallel.DistributedDataParallel`. Rank 0 alone
validates, writes checkpoints and returns the weights; the calling process logs to MLflow,
so tracking never runs in more than one process.
"""

from __future__ import annotations

import os
import signal
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist

from ..errors import MisoBenchError

__all__ = [
    "broadcast",
    "device_count",
    "gather_rows",
    "global_sum",
    "launch",
    "process_group",
    "shard",
]


def shard() -> tuple[int, int]:
    """``(rank, world size)`` of this process; ``(0, 1)`` outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def broadcast(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (no-op outside a process group)."""
    if shard()[1] == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def global_sum(value: torch.Tensor) -> torch.Tensor:
    """The sum of ``value`` over all ranks (detached; ``value`` itself outside a group).

    Losses divide by it to normalise by the *global* batch: a rank's loss is then its share of
    the one-process loss, and DDP's gradient average reproduces the one-process gradient.
    """
    total = value.detach().clone()
    if shard()[1] > 1:
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def gather_rows(value: torch.Tensor, dim: int = 0) -> tuple[torch.Tensor, int]:
    """Concatenate every rank's ``value`` along ``dim``, differentiably.

    Ranks may hold different numbers of rows (a global batch split unevenly): rows are padded
    for the collective and the padding dropped. Gradients flow back to each rank's own rows
    (``torch.distributed.nn.functional.all_gather``).

    Returns:
        The gathered tensor (rank 0's rows first) and the position of this rank's first row.
    """
    rank, world = shard()
    if world == 1:
        return value, 0
    n = torch.tensor([value.shape[dim]], device=value.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    counts = [int(c.item()) for c in sizes]
    most = max(counts)
    padded = value
    if value.shape[dim] < most:
        shape = list(value.shape)
        shape[dim] = most - value.shape[dim]
        padded = torch.cat([value, value.new_zeros(shape)], dim=dim)
    parts = _GatherRows.apply(padded.contiguous())  # (world, *padded.shape)
    rows = [parts[r].narrow(dim, 0, c) for r, c in enumerate(counts)]
    return torch.cat(rows, dim=dim), sum(counts[:rank])


class _GatherRows(torch.autograd.Function):
    """All-gather with a gradient: each rank's rows receive the sum over ranks of the
    gradients flowing into them (all-reduce of the gathered gradient, then this rank's part:
    works on Gloo and NCCL alike)."""

    @staticmethod
    def forward(ctx: Any, value: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(value) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, value)
        return torch.stack(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        total = grad.contiguous().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total[dist.get_rank()]


def device_count(device_type: str) -> int:
    """Devices a run may use: visible GPUs for ``cuda``, CPU cores for ``cpu``."""
    if device_type == "cuda":
        return torch.cuda.device_count()
    return os.cpu_count() or 1


@contextmanager
def process_group(device_type: str) -> Iterator[tuple[int, int]]:
    """Join the process group the launcher set up (``RANK``/``WORLD_SIZE`` environment).

    Selects this rank's GPU (NCCL) or splits the CPU threads between ranks (Gloo), and
    leaves the group on exit.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
        backend = "nccl"
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
        backend = "gloo"
    dist.init_process_group(backend)
    try:
        yield dist.get_rank(), dist.get_world_size()
    finally:
        dist.destroy_process_group()


def launch(fn: Callable[..., Any], args: tuple[Any, ...], nprocs: int) -> dict[int, Any]:
    """Run ``fn(*args)`` in ``nprocs`` worker processes, as ``torchrun --nproc-per-node``
    would, and return each rank's result.

    ``fn`` must be importable (a module-level function) and ``args`` picklable. A
    :class:`~miso_bench.errors.MisoBenchError` raised in a worker is raised here with its
    message (the other workers are stopped); Ctrl-C stops the workers and raises
    ``KeyboardInterrupt`` here, so the caller's interruption handling applies.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nprocs,
        run_id=uuid.uuid4().hex,
        rdzv_backend="c10d",
        rdzv_endpoint="127.0.0.1:0",
        max_restarts=0,
        monitor_interval=0.1,
        start_method="spawn",
    )
    # The elastic agent installs its own SIGTERM/SIGINT/SIGHUP/SIGQUIT handlers and leaves them
    # in place: restore the caller's, so that Ctrl-C or `kill` after the fit still reaches the
    # caller's interruption handling (runs end KILLED and resume).
    saved = {
        sig: signal.getsignal(sig)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
    }
    try:
        return dict(elastic_launch(config, fn)(*args))
    except SignalException as exc:
        raise KeyboardInterrupt from exc
    except ChildFailedError as exc:
        user_error = _user_error(exc)
        if user_error is None:
            raise
        raise MisoBenchError(user_error) from None
    finally:
        if threading.current_thread() is threading.main_thread():
            for sig, handler in saved.items():
                if handler is not None:
                    signal.signal(sig, handler)


def _user_error(exc: Any) -> str | None:
    """The message of a :class:`MisoBenchError` that made a worker fail, if that was it."""
    names = {MisoBenchError.__name__}
    todo = [MisoBenchError]
    while todo:
        for sub in todo.pop().__subclasses__():
            names.add(sub.__name__)
            todo.append(sub)
    for failure in exc.failures.values():
        message = failure.message
        text = message.get("message", "") if isinstance(message, dict) else str(message)
        name, _, rest = text.partition(": ")
        if name.rsplit(".", 1)[-1] in names:
            return rest
    return None
