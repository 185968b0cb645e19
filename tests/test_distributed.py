"""How the ranks agree at an evaluation (kohya_ext.training.distributed), in-process with fakes; the
two-process runs are in test_train_standin.py and test_gui_network.py."""

from __future__ import annotations

import pytest
from accelerate.utils import DistributedType

from kohya_ext.training import distributed


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
    monkeypatch.setattr(distributed, "_torch_world", lambda: (2, "gloo"))
    acc = _Acc(DistributedType.NO, 2)
    sync = distributed.rank_sync(acc)
    assert (sync.mode, sync.world, sync.distributed_type, sync.backend) == (distributed.TORCH, 2, "NO", "gloo")
    monkeypatch.setattr(distributed, "_default_store", lambda: None)  # a torch without the store: the collective
    sync.barrier(acc)
    assert sync.broadcast(None) == "STOP"
    assert torch_calls == ["barrier", ("broadcast", 0)] and acc.waits == 0
    assert "through torch.distributed" in sync.describe() and "distributed_type NO" in sync.describe()


def test_accelerate_distributed_uses_accelerate_helpers(monkeypatch, torch_calls):
    import accelerate.utils

    monkeypatch.setattr(distributed, "_torch_world", lambda: (2, "gloo"))
    sent = []

    def bcast(box, from_process=0):
        sent.append(from_process)
        box[0] = "STOP"

    monkeypatch.setattr(accelerate.utils, "broadcast_object_list", bcast)
    monkeypatch.setattr(distributed, "_default_store", lambda: None)  # no torch.distributed store (e.g. XLA)
    acc = _Acc(DistributedType.MULTI_CPU, 2)
    sync = distributed.rank_sync(acc)
    assert sync.mode == distributed.ACCELERATE and sync.distributed_type == "MULTI_CPU"
    sync.barrier(acc)
    assert sync.broadcast(None) == "STOP" and sent == [0] and acc.waits == 1 and torch_calls == []


def test_single_process_and_no_group_make_no_collective(monkeypatch, torch_calls):
    monkeypatch.setattr(distributed, "_torch_world", lambda: (1, None))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    acc = _Acc(DistributedType.NO, 1)
    single = distributed.rank_sync(acc)
    assert single.mode == distributed.SINGLE and single.world == 1
    single.barrier(acc)
    assert single.broadcast("mine") == "mine"
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun started 2 ranks, but nobody made a group
    lone = distributed.rank_sync(acc)
    assert lone.mode == distributed.NONE and lone.world == 2 and "cannot make them agree" in lone.describe()
    lone.barrier(acc)
    assert lone.broadcast("mine") == "mine" and torch_calls == [] and acc.waits == 0


def test_an_accelerator_without_a_type_reads_its_state():
    class _State:
        distributed_type = DistributedType.MULTI_GPU

    class _Old:
        state = _State()
        num_processes = 4

    assert distributed.rank_sync(_Old()).mode == distributed.ACCELERATE


def test_store_broadcast_hands_rank_0s_decision_to_a_rank_that_asked_first():
    """The torch path's broadcast goes through the group's key-value store (no gloo worker thread,
    see store_broadcast): rank 1 asks before rank 0 has decided, waits, and gets rank 0's value;
    the next evaluation's broadcast is a new key, so it never reads the previous answer."""
    import datetime
    import threading
    import time

    import torch.distributed as dist

    store = dist.HashStore()
    store.set_timeout(datetime.timedelta(seconds=30))
    got: list = []
    rank1 = threading.Thread(target=lambda: got.extend([distributed.store_broadcast(store, 1, "mine", 1),
                                                        distributed.store_broadcast(store, 1, "mine", 2)]))
    rank1.start()
    time.sleep(0.3)
    assert got == [] and rank1.is_alive()  # waiting for rank 0
    assert distributed.store_broadcast(store, 0, "early stop at step 6", 1) == "early stop at step 6"
    time.sleep(0.1)
    assert distributed.store_broadcast(store, 0, None, 2) is None
    rank1.join(10)
    assert got == ["early stop at step 6", None]


@pytest.mark.parametrize("dtype", [DistributedType.NO, DistributedType.MULTI_CPU])
def test_a_group_with_a_store_broadcasts_through_it_on_either_path(monkeypatch, torch_calls, dtype):
    """accelerate's path (MULTI_CPU, accelerate <= 1.12) and the torch path alike: no tensor collective."""
    import datetime

    import torch.distributed as dist

    store = dist.HashStore()
    store.set_timeout(datetime.timedelta(seconds=10))
    monkeypatch.setattr(distributed, "_torch_world", lambda: (2, "gloo"))
    monkeypatch.setattr(distributed, "_default_store", lambda: store)
    monkeypatch.setattr(distributed, "_broadcasts", 0)
    monkeypatch.setattr(dist, "get_rank", lambda *a: 1)
    distributed.store_broadcast(store, 0, "STOP from the store", 1)  # what rank 0 sets
    sync = distributed.rank_sync(_Acc(dtype, 2))
    assert sync.mode in (distributed.TORCH, distributed.ACCELERATE)
    assert sync.broadcast(None) == "STOP from the store" and torch_calls == []
