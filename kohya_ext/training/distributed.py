"""Rank agreement at an evaluation: a barrier and a broadcast from rank 0 that reach every rank.

accelerate's helpers (``wait_for_everyone``, ``broadcast_object_list``) act only when its ``distributed_type``
names a distributed run. Since accelerate 1.13.0 a CPU-only torchrun launch is typed ``NO`` although
accelerate made a process group (the helpers then return at once on every rank, so the collectives go
through ``torch.distributed`` on that group), or, without a backend, makes no group at all: every process
trains alone, nothing can make them agree, and kohya-ext says so once (mode ``none``). GPU runs keep
accelerate's helpers. The whole account: docs/training.md, "accelerate versions".

The path is chosen from values every rank computes alike (accelerate's type and process count, the
group's world size), so every rank takes the same one: no rank waits in a collective that another
skips.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

SINGLE = "single"  # one process: nothing to agree on
ACCELERATE = "accelerate"  # accelerate's own helpers work for this run
TORCH = "torch"  # accelerate's helpers are no-ops here; torch.distributed has the ranks
NONE = "none"  # several ranks by the environment, but no process group: they cannot agree
# (accelerate >= 1.13, CPU only, no backend given: each process is a single-process run of its own)

# accelerate's types its helpers act on (accelerate.utils.constants.TORCH_DISTRIBUTED_OPERATION_TYPES
# plus XLA), for when that constant cannot be imported.
_FALLBACK_TYPES = frozenset({"DEEPSPEED", "MULTI_GPU", "FSDP", "MEGATRON_LM", "TP", "MULTI_NPU", "MULTI_MLU", "MULTI_SDAA",
                             "MULTI_MUSA", "MULTI_XPU", "MULTI_CPU", "MULTI_HPU", "MULTI_NEURON", "XLA"})


def _type_name(accelerator: Any) -> str:
    dt = getattr(accelerator, "distributed_type", None)
    if dt is None:
        dt = getattr(getattr(accelerator, "state", None), "distributed_type", None)
    if dt is None:
        return "NO"
    return str(getattr(dt, "value", dt)).split(".")[-1]


def _accelerate_types() -> frozenset:
    try:
        from accelerate.utils.constants import TORCH_DISTRIBUTED_OPERATION_TYPES

        return frozenset(str(getattr(t, "value", t)) for t in TORCH_DISTRIBUTED_OPERATION_TYPES) | {"XLA"}
    except Exception:  # an accelerate without the constant, or none at all
        return _FALLBACK_TYPES


def _torch_world() -> tuple[int, str | None]:
    """(world size, backend) of torch.distributed's default group; (1, None) without one."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_world_size(), str(dist.get_backend())
    except Exception:
        pass
    return 1, None


def _accelerate_version() -> str:
    try:
        import accelerate

        return str(accelerate.__version__)
    except Exception:
        return "?"


@dataclass(frozen=True)
class RankSync:
    mode: str
    world: int
    accelerate_version: str
    distributed_type: str
    backend: str | None = None

    def describe(self) -> str:
        """One line for the main process's log (multi-rank runs only)."""
        head = (f"{self.world} ranks (accelerate {self.accelerate_version}, distributed_type {self.distributed_type}"
                + (f", torch.distributed {self.backend}" if self.backend else "") + ")")
        if self.mode == ACCELERATE:
            return f"{head}: rank 0 scores; its stop decision is broadcast to every rank"
        if self.mode == TORCH:
            return (f"{head}: accelerate's own barrier and broadcast do nothing in this run, so kohya-ext waits and "
                    "broadcasts rank 0's stop decision through torch.distributed")
        return (f"{head}: warning: no torch.distributed process group, so accelerate runs every process as a "
                "training of its own and kohya-ext cannot make them agree on an early stop (a CPU-only torchrun needs "
                "a backend, e.g. InitProcessGroupKwargs(backend='gloo'), with accelerate >= 1.13)")

    def barrier(self, accelerator: Any) -> None:
        if self.mode == ACCELERATE:
            accelerator.wait_for_everyone()
        elif self.mode == TORCH:
            import torch.distributed as dist

            dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` (a JSON value: the stop message or None) on every rank (``obj`` as given
        without several ranks to agree)."""
        global _broadcasts
        box = [obj]
        store = _default_store() if self.mode in (ACCELERATE, TORCH) else None
        if store is not None:  # every backend's group has one; see store_broadcast for why it is preferred
            import torch.distributed as dist

            _broadcasts += 1
            return store_broadcast(store, dist.get_rank(), obj, _broadcasts)
        if self.mode == ACCELERATE:  # e.g. XLA, without a torch.distributed group
            from accelerate.utils import broadcast_object_list

            broadcast_object_list(box, from_process=0)
        elif self.mode == TORCH:
            import torch.distributed as dist

            dist.broadcast_object_list(box, src=0)  # a torch without the store: the collective
        return box[0]


_broadcasts = 0  # store broadcasts made by this process (see store_broadcast)


def _default_store() -> Any:
    try:
        import torch.distributed as dist

        return dist.distributed_c10d._get_default_store()
    except Exception:
        return None


def store_broadcast(store: Any, rank: int, obj: Any, seq: int) -> Any:
    """Rank 0's ``obj`` (a JSON value) through the process group's key-value store, not a gloo collective.

    ``dist.broadcast_object_list`` hands Python tensors to a gloo worker thread, which drops the last
    reference to them after the call has returned; on a busy machine that can happen only once the
    interpreter is finalising, and the thread then needs the GIL it can no longer take: ``terminate
    called without an active exception``, SIGABRT, a finished run that exits non-zero (core dump:
    ``ProcessGroupGloo::AsyncWork::~AsyncWork`` -> ``decref_pyobject`` -> ``take_gil`` ->
    ``pthread_exit``; ``destroy_process_group`` leaves those threads running here). The store has no
    worker thread; ``get`` blocks until rank 0 has set the key, for at most the store's timeout.
    JSON, not pickle: the store is a TCP port of the job.
    """
    import json

    # ``seq``: every rank broadcasts in the same order, so its count names the same key on each.
    # torchrun's own store outlives a restarted attempt (--max-restarts): a stale answer must not be read
    key = f"kohya_ext/attempt{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/broadcast/{seq}"
    if rank == 0:
        store.set(key, json.dumps(obj))
        return obj
    return json.loads(store.get(key))


def is_main_process() -> bool:
    """Rank 0 of the launch (torchrun and accelerate set ``RANK``; a single process has none). Known before
    the accelerator exists, the same way on both entry points; with mode ``none`` (every process a run of
    its own) only rank 0 evaluates, so the processes never write the same files."""
    return int(os.environ.get("RANK", "0") or 0) == 0


def _env_world() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE") or 1)
    except ValueError:
        return 1


def rank_sync(accelerator: Any) -> RankSync:
    """How the ranks of this run agree (the same answer on every rank)."""
    dtype = _type_name(accelerator)
    try:
        n_acc = int(getattr(accelerator, "num_processes", 1) or 1)
    except (TypeError, ValueError):
        n_acc = 1
    world, backend = _torch_world()
    env_world = _env_world()
    if dtype in _accelerate_types() and n_acc > 1:
        mode = ACCELERATE
    elif world > 1:
        mode = TORCH
    elif n_acc > 1 or env_world > 1:
        mode = NONE
    else:
        mode = SINGLE
    return RankSync(mode, max(world, n_acc, env_world), _accelerate_version(), dtype, backend)
