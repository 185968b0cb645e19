"""How the ranks agree at an evaluation (kohya_ext.training.ranks), in-process with fakes; the
two-process runs are in test_train_standin.py and test_gui_network.py."""

from __future__ import annotations

import pytest
from accelerate.utils import DistributedType

from kohya_ext.training import ranks


class _Acc:
    def __init__(self, distributed_type, num_processes):
        self.distributed_type = distributed_type
        self.num_processes = num_processes
        self.waits = 0

    def wait_for_everyone(self):
        self.waits += 1


@pytest.fixture
def torch_calls(monkeypatch):
    """torch.distributed's barrier and broadcast_object_list recorded; rank 0 'sends' STOP."""
    import torch.distributed as dist

    calls = []
    monkeypatch.setattr(dist, "barrier", lambda *a, **k: calls.append("barrier"))

    def bcast(box, src=0, **k):
        calls.append(("broadcast", src))
        box[0] = "STOP"

    monkeypatch.setattr(dist, "broadcast_object_list", bcast)
    return calls


def test_accelerate_typed_no_with_a_two_rank_group_goes_through_torch(monkeypatch, torch_calls):
    """accelerate >= 1.13 on a CPU-only torchrun without cpu=True: typed NO, 2 processes, and its
    own group initialised; its helpers would do nothing, so torch.distributed is used."""
    monkeypatch.setattr(ranks, "_torch_world", lambda: (2, "gloo"))
    acc = _Acc(DistributedType.NO, 2)
    sync = ranks.rank_sync(acc)
    assert (sync.mode, sync.world, sync.distributed_type, sync.backend) == (ranks.TORCH, 2, "NO", "gloo")
    sync.barrier(acc)
    assert sync.broadcast(None) == "STOP"
    assert torch_calls == ["barrier", ("broadcast", 0)] and acc.waits == 0
    assert "through torch.distributed" in sync.describe() and "distributed_type NO" in sync.describe()


def test_accelerate_distributed_uses_accelerate_helpers(monkeypatch, torch_calls):
    import accelerate.utils

    monkeypatch.setattr(ranks, "_torch_world", lambda: (2, "gloo"))
    sent = []

    def bcast(box, from_process=0):
        sent.append(from_process)
        box[0] = "STOP"

    monkeypatch.setattr(accelerate.utils, "broadcast_object_list", bcast)
    acc = _Acc(DistributedType.MULTI_CPU, 2)
    sync = ranks.rank_sync(acc)
    assert sync.mode == ranks.ACCELERATE and sync.distributed_type == "MULTI_CPU"
    sync.barrier(acc)
    assert sync.broadcast(None) == "STOP" and sent == [0] and acc.waits == 1 and torch_calls == []


def test_single_process_and_no_group_make_no_collective(monkeypatch, torch_calls):
    monkeypatch.setattr(ranks, "_torch_world", lambda: (1, None))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    acc = _Acc(DistributedType.NO, 1)
    single = ranks.rank_sync(acc)
    assert single.mode == ranks.SINGLE and single.world == 1
    single.barrier(acc)
    assert single.broadcast("mine") == "mine"
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun started 2 ranks, but nobody made a group
    lone = ranks.rank_sync(acc)
    assert lone.mode == ranks.NONE and lone.world == 2 and "cannot make them agree" in lone.describe()
    lone.barrier(acc)
    assert lone.broadcast("mine") == "mine" and torch_calls == [] and acc.waits == 0


def test_an_accelerator_without_a_type_reads_its_state():
    class _State:
        distributed_type = DistributedType.MULTI_GPU

    class _Old:
        state = _State()
        num_processes = 4

    assert ranks.rank_sync(_Old()).mode == ranks.ACCELERATE
