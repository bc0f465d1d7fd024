"""The deep-model training loop. It receives an ``nn.Module`` and never imports ``models/``.

- AdamW with parameter groups: no weight decay on norms and biases, a learning-rate
  multiplier for the backbone;
- linear warm-up then cosine decay to ``min_lr_ratio``, stepped per iteration, continuous (no
  jump at the end of warm-up);
- the fused AdamW kernel; gradient clipping; bf16 autocast and channels-last on CUDA;
- model selection and early stopping on a validation score computed by the caller on the
  inner validation split (never the test fold); without a validation split (``validate``
  returns None) the last epoch is kept and training runs every epoch;
- a per-epoch callback (progress bars, pruning): if it raises, training stops on every rank
  and the exception reaches the caller;
- ``best.pt`` and ``last.pt`` checkpoints; an interrupted fit resumes from ``last.pt``;
- data parallel on several devices inside a process group (:mod:`.distributed`): the module
  is wrapped in DDP, rank 0 validates (its score is broadcast so that every rank stops at the
  same epoch) and writes the checkpoints.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..errors import warn
from ..provenance import cpu_info
from .distributed import broadcast, shard

__all__ = [
    "TrainConfig",
    "TrainResult",
    "bf16_pays",
    "bf16_speedup",
    "cosine_with_warmup",
    "fit_module",
    "native_bf16",
    "param_groups",
    "restore_optimizer",
]


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively: CUDA, or a CPU with AVX512-BF16 or AMX
    (elsewhere bf16 is emulated on CPU and slower than fp32)."""
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    return bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())


#: bf16 autocast is chosen on a CPU only where a bf16 matrix product runs at least this many
#: times as fast as an fp32 one (measured: 4.0x on an AMD EPYC with AVX512-BF16, where bf16
#: training steps are 1.25x faster; 0.5x on an Intel Xeon whose AVX512-BF16 runs without
#: AMX, where they are 1.2x slower).
BF16_MIN_SPEEDUP = 1.5


def bf16_pays(device: torch.device) -> bool:
    """Whether bf16 autocast makes training faster on ``device``: always on CUDA; on a CPU
    only with bf16 instructions (AVX512-BF16 or AMX) *and* a measured bf16 matrix product at
    least :data:`BF16_MIN_SPEEDUP` times as fast as fp32 (:func:`bf16_speedup`), since some
    CPUs advertise the instructions yet run bf16 products slower than fp32."""
    if device.type == "cuda":
        return True
    if not native_bf16(device):
        return False
    return bf16_speedup() >= BF16_MIN_SPEEDUP


@functools.cache
def bf16_speedup(n: int = 512, rounds: int = 7) -> float:
    """fp32 over bf16 seconds of an ``n`` x ``n`` matrix product on this CPU with the current
    threads: the fastest of ``rounds`` interleaved rounds of each after a warm-up (about 50 ms,
    measured once per process)."""
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(n, n, generator=gen)
    b = torch.rand(n, n, generator=gen)
    a16, b16 = a.bfloat16(), b.bfloat16()
    best = [math.inf, math.inf]
    for i in range(rounds + 1):
        for k, (x, y) in enumerate(((a, b), (a16, b16))):
            start = time.perf_counter()
            torch.mm(x, y)
            if i:  # the first round warms both up
                best[k] = min(best[k], time.perf_counter() - start)
    return best[0] / best[1]


def _cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    return frozenset(cpu_info().get("flags", "").split())


@dataclass
class TrainConfig:
    """Optimisation settings.

    Attributes:
        epochs: maximum epochs.
        lr: base learning rate (heads, decoders, mappers).
        backbone_lr_mult: multiplier of the backbone's learning rate.
        weight_decay: AdamW decay (not applied to norms and biases).
        warmup_frac: share of the steps spent warming up linearly.
        min_lr_ratio: final learning rate as a share of the base.
        clip_grad: gradient-norm clip (0 = none).
        patience: epochs without validation improvement before stopping.
        device: ``cpu`` or ``cuda``.
        amp: bf16 autocast of the forward pass and loss (callers decide where: see
            :func:`bf16_pays`).
    """

    epochs: int = 10
    lr: float = 5e-4
    backbone_lr_mult: float = 1.0
    weight_decay: float = 0.01
    warmup_frac: float = 0.05
    min_lr_ratio: float = 0.05
    clip_grad: float = 1.0
    patience: int = 4
    device: str = "cpu"
    amp: bool = False


@dataclass
class TrainResult:
    """What a fit did: per-epoch history, best epoch and score, whether it resumed, and
    whether another rank's callback stopped it."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_score: float = -math.inf
    resumed_from: int | None = None
    seconds: float = 0.0
    stopped: bool = False


def param_groups(
    module: nn.Module,
    backbone: Sequence[nn.Parameter],
    lr: float,
    backbone_lr_mult: float,
    weight_decay: float,
) -> list[dict[str, Any]]:
    """AdamW groups: (backbone | rest) x (decay | no decay for norms, biases, 1-D params)."""
    backbone_ids = {id(p) for p in backbone}
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for _, p in module.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1
        groups.setdefault((id(p) in backbone_ids, no_decay), []).append(p)
    out = []
    for (is_backbone, no_decay), params in groups.items():
        out.append(
            {
                "params": params,
                "lr": lr * (backbone_lr_mult if is_backbone else 1.0),
                "weight_decay": 0.0 if no_decay else weight_decay,
                "name": f"{'backbone' if is_backbone else 'head'}{'_no_decay' if no_decay else ''}",
            }
        )
    return out


def _save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary name, then rename: a process killed while saving never
    leaves a truncated checkpoint in place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _load_checkpoint(path: Path, device: torch.device) -> Any:
    """A checkpoint (tensors only, ``weights_only``), or None when absent or unreadable (an
    unreadable one is set aside with a warning)."""
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # torch.load raises many types on a damaged file
        path.replace(path.with_name(path.name + ".damaged"))
        warn(
            "damaged_checkpoint",
            f"{path}: unreadable checkpoint set aside ({type(exc).__name__})"
            + ("; the fit starts from the beginning" if path.name == "last.pt" else ""),
        )
        return None


def _resume_state(ckpt: Path, device: torch.device) -> tuple[Any, Any]:
    """The interrupted fit's training state (``last.pt``) and the weights of its best epoch
    so far, or ``(None, None)`` to start from the beginning.

    Resuming without the best epoch's weights would end, if no later epoch beats its score,
    on the last epoch's weights while reporting the best one: when ``best.pt`` is missing or
    unreadable and the best epoch is not the last one saved, the fit starts afresh instead.
    """
    state = _load_checkpoint(ckpt / "last.pt", device)
    if state is None:
        return None, None
    best_epoch = int(state["best_epoch"])
    best_state = _load_checkpoint(ckpt / "best.pt", torch.device("cpu"))
    if best_state is None and best_epoch == int(state["epoch"]):
        best_state = {k: v.detach().cpu().clone() for k, v in state["model"].items()}
    if best_state is None and best_epoch >= 0:
        warn(
            "damaged_checkpoint",
            f"{ckpt / 'best.pt'}: missing or unreadable, so the weights of the best epoch "
            f"so far (epoch {best_epoch + 1} of the {int(state['epoch']) + 1} done) cannot be "
            "restored; the fit starts from the beginning",
        )
        return None, None
    return state, best_state


def restore_optimizer(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load an optimizer state, keeping this loop's fused kernel: ``load_state_dict`` copies
    every setting of the saved groups, so a checkpoint written by the single-tensor AdamW
    would otherwise switch the resumed fit back to it (same numbers, slower)."""
    optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        if "fused" not in group:
            continue
        group["fused"] = True
        group["foreach"] = None
        for p in group["params"]:  # the fused kernel wants fp32 steps on the parameter's device
            st = optimizer.state.get(p, {})
            if isinstance(st.get("step"), torch.Tensor):
                st["step"] = st["step"].to(device=p.device, dtype=torch.float32)


def cosine_with_warmup(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Learning-rate factor: linear 0 -> 1 over ``warmup`` steps, then cosine to ``min_ratio``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def fit_module(
    module: nn.Module,
    batches: Callable[[int], Iterable[Any]],
    steps_per_epoch: int,
    step_loss: Callable[[nn.Module, Any], tuple[torch.Tensor, dict[str, float]]],
    validate: Callable[[nn.Module], float | None],
    cfg: TrainConfig,
    backbone: Sequence[nn.Parameter] = (),
    checkpoint_dir: str | Path | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train ``module`` and leave it with the weights of the best validation epoch (or of the
    last epoch when there is no validation split).

    Args:
        module: the network (moved to ``cfg.device``).
        batches: ``epoch -> iterable of batches`` (the caller seeds its order by epoch). In a
            process group every rank must yield the same number of batches (its share of
            each global batch, see :func:`.distributed.shard`).
        steps_per_epoch: batches per epoch (for the schedule).
        step_loss: ``(module, batch) -> (loss, logged parts)``.
        validate: ``module -> score`` on the inner validation split (higher is better), or
            None when there is no validation split: then the last epoch is kept.
        cfg: optimisation settings.
        backbone: parameters that get ``backbone_lr_mult``.
        checkpoint_dir: where ``best.pt`` and ``last.pt`` go; an existing ``last.pt`` is
            resumed.
        on_epoch: called on rank 0 after each epoch (and its checkpoint) with the epoch and
            its record; an exception it raises stops training on every rank and is raised
            here (other ranks return what they have).
    """
    start = time.perf_counter()
    device = torch.device(cfg.device)
    module.to(device)
    if device.type == "cuda":
        module.to(memory_format=torch.channels_last)
    rank, world = shard()
    trained: nn.Module = module
    if world > 1:
        trained = DistributedDataParallel(
            module,
            device_ids=[torch.cuda.current_device()] if device.type == "cuda" else None,
            find_unused_parameters=True,  # ablations leave some heads out of the loss
        )
    ckpt = Path(checkpoint_dir) if checkpoint_dir else None
    writer = ckpt if rank == 0 else None  # rank 0 alone writes checkpoints
    # The fused AdamW kernel (CPU and CUDA) does the single-tensor update's arithmetic in one
    # pass over each parameter: 4x faster on CPU (benchmarks/bench_miso.py), same numbers.
    optimizer = torch.optim.AdamW(
        param_groups(module, backbone, cfg.lr, cfg.backbone_lr_mult, cfg.weight_decay),
        lr=cfg.lr,
        fused=True,
    )
    total = cfg.epochs * steps_per_epoch
    warmup = int(cfg.warmup_frac * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: cosine_with_warmup(s, total, warmup, cfg.min_lr_ratio)
    )
    result = TrainResult()
    best_state: dict[str, torch.Tensor] | None = None
    first_epoch = 0
    state, best_state = _resume_state(ckpt, device) if ckpt is not None else (None, None)
    if state is not None:
        module.load_state_dict(state["model"])
        restore_optimizer(optimizer, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        first_epoch = int(state["epoch"]) + 1
        result.history = list(state["history"])
        result.best_epoch = int(state["best_epoch"])
        result.best_score = float(state["best_score"])
        result.resumed_from = first_epoch
    use_amp = cfg.amp
    for epoch in range(first_epoch, cfg.epochs):
        if result.best_epoch >= 0 and epoch - result.best_epoch > cfg.patience:
            break
        trained.train()
        sums: dict[str, float] = {}
        n = 0
        for batch in batches(epoch):
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss, parts = step_loss(trained, batch)
            loss.backward()
            if cfg.clip_grad:
                nn.utils.clip_grad_norm_(module.parameters(), cfg.clip_grad)
            optimizer.step()
            scheduler.step()
            n += 1
            for k, v in {"loss/total": float(loss.detach()), **parts}.items():
                sums[k] = sums.get(k, 0.0) + v
        if world > 1:
            # Each rank's loss is its share of the global loss times the world size: the mean
            # over ranks is the loss of the global batch (what one process would log).
            keys = sorted(sums)
            totals = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=device)
            torch.distributed.all_reduce(totals)
            sums = {k: float(v) / world for k, v in zip(keys, totals.tolist(), strict=True)}
        module.eval()
        score = None
        if rank == 0:
            with torch.no_grad():
                score = validate(module)
        score = broadcast(None if score is None else float(score))
        record = {
            "epoch": float(epoch),
            "epochs": float(cfg.epochs),
            "lr": float(scheduler.get_last_lr()[0]),
            **{k: v / max(n, 1) for k, v in sums.items()},
        }
        if score is not None:
            record["val/score"] = float(score)
        result.history.append(record)
        # Without validation every epoch "improves": the last one is kept, none stops early.
        improved = score is None or float(score) > result.best_score
        if improved:
            result.best_score = -math.inf if score is None else float(score)
            result.best_epoch = epoch
            best_state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
            if writer is not None:
                writer.mkdir(parents=True, exist_ok=True)
                _save_atomic(best_state, writer / "best.pt")
        if writer is not None:
            writer.mkdir(parents=True, exist_ok=True)
            _save_atomic(
                {
                    "model": module.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "epoch": epoch,
                    "history": result.history,
                    "best_epoch": result.best_epoch,
                    "best_score": result.best_score,
                    "config": asdict(cfg),
                },
                writer / "last.pt",
            )
        stop: BaseException | None = None
        if on_epoch is not None and rank == 0:
            try:
                on_epoch(epoch, record)
            except BaseException as exc:  # re-raised below, after every rank agreed to stop
                stop = exc
        if bool(broadcast(stop is not None)):
            if stop is not None:
                raise stop
            result.stopped = True
            break
    if best_state is not None:
        module.load_state_dict(best_state)
    result.seconds = time.perf_counter() - start
    return result
