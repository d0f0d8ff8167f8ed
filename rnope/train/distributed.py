"""Process-group setup, model wrapping (DDP / FSDP2) and full-state gather/scatter.

``torchrun --nproc_per_node=N -m rnope train ...`` sets ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``;
``--distributed auto`` then means DDP. Backend: NCCL on GPU, gloo on CPU. FSDP2 is
``torch.distributed.fsdp.fully_shard`` on every block, then on the root.

Checkpoints always hold the *full* (unsharded) model and optimizer state, gathered with
``torch.distributed.checkpoint.state_dict`` (``full_state_dict=True``), so a run saved under FSDP
resumes under DDP or one process and ``rnope.load`` reads it like any other.
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as tdist

__all__ = ["Dist", "full_state", "load_full_state", "no_sync", "setup", "teardown", "wrap"]


@dataclass(frozen=True)
class Dist:
    mode: str  # none | ddp | fsdp
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.mode != "none"


def env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ValueError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer") from None


def resolve_mode(mode: str) -> str:
    """``auto`` → ddp under torchrun with several processes, else none; checks explicit choices."""
    world = env_world_size()
    if mode == "auto":
        return "ddp" if world > 1 else "none"
    if mode == "none" and world > 1:
        raise ValueError(f"--distributed none, but WORLD_SIZE={world}: use --distributed ddp or fsdp under torchrun")
    return mode


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup(mode: str) -> Dist:
    """Initialise the process group (if any) and pick the device."""
    cuda = torch.cuda.is_available()
    if mode == "none":
        return Dist("none", 0, 1, 0, torch.device("cuda" if cuda else "cpu"))
    if "RANK" not in os.environ:  # ddp/fsdp asked for outside torchrun: a group of one
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local)
    device = torch.device(f"cuda:{local}" if cuda else "cpu")
    if not tdist.is_initialized():
        tdist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
    return Dist(mode, tdist.get_rank(), tdist.get_world_size(), local, device)


def teardown(d: Dist) -> None:
    if d.active and tdist.is_initialized():
        tdist.destroy_process_group()


def barrier(d: Dist) -> None:
    if d.active:
        tdist.barrier()


def all_reduce_sum(d: Dist, t: torch.Tensor) -> torch.Tensor:
    if d.active and d.world > 1:
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return t


def any_flag(d: Dist, flag: bool) -> bool:
    """True on every rank if ``flag`` is true on any (a signal seen by one rank stops all)."""
    if not (d.active and d.world > 1):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=d.device)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return bool(t.item())


def wrap(model: torch.nn.Module, d: Dist) -> torch.nn.Module:
    """DDP wrapper, or FSDP2 sharding in place (returns the module that runs forward)."""
    if d.mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, device_ids=[d.local_rank] if d.device.type == "cuda" else None)
    if d.mode == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if d.device.type == "cuda" else None
        kw = {"mp_policy": mp} if mp is not None else {}
        for block in model.layers:
            fully_shard(block, **kw)
        fully_shard(model, **kw)
    return model


@contextlib.contextmanager
def no_sync(model: torch.nn.Module, d: Dist, sync: bool):
    """Skip the gradient all-reduce on micro-steps before the last of a step."""
    if sync or not d.active:
        yield
    elif d.mode == "ddp":
        with model.no_sync():
            yield
    else:  # FSDP2
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)


def _opts(everyone: bool):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=not everyone)


def full_state(model: torch.nn.Module, optim: torch.optim.Optimizer, d: Dist, *, everyone: bool = False) -> tuple[dict, dict]:
    """Full model and optimizer state on CPU, keyed by parameter name.

    A collective under FSDP (call on every rank). ``everyone=False``: only rank 0 gets the tensors
    (others get empty dicts); ``everyone=True``: all ranks do (for a stage switch).
    """
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    msd = get_model_state_dict(model, options=_opts(everyone))
    osd = get_optimizer_state_dict(model, optim, options=_opts(everyone))

    def cpu(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            return x.detach().to("cpu", copy=True)
        if isinstance(x, dict):
            return {k: cpu(v) for k, v in x.items()}
        return x

    return cpu(msd), cpu(osd)


def load_full_state(model: torch.nn.Module, optim: torch.optim.Optimizer | None, msd: dict, osd: dict | None) -> None:
    """Load full (unsharded) state dicts into a possibly sharded model and its optimizer."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True, strict=True)
    set_model_state_dict(model, msd, options=opts)
    if optim is not None and osd is not None and osd.get("state"):
        # moments from the checkpoint; hyper-parameters (fused, betas, ...) from this run's optimizer
        groups = [
            {**{k: v for k, v in cur.items() if k != "params"}, "params": saved["params"]}
            for cur, saved in zip(optim.param_groups, osd["param_groups"])
        ]
        osd = {"state": osd["state"], "param_groups": groups}
        set_optimizer_state_dict(model, optim, osd, options=StateDictOptions(full_state_dict=True))
