"""The stage runner (cache keys, versions, timings, memory) and the executors' contract (order, one torch thread)."""

import pickle
import threading

import numpy as np
import pytest
import torch

from relearn_core.cache import Cache
from relearn_core.errors import RelearnError
from relearn_core.executors import LocalExecutor, make_executor
from relearn_core.records import Descriptor
from relearn_core.workspace import Stage, Workspace


def counting(calls: list, value: float = 1.0):
    def compute():
        calls.append(value)
        return Descriptor(np.full(3, value, np.float32))

    return compute


def test_an_entry_is_keyed_by_inputs_stage_version_and_parameters(tmp_path):
    ws, calls = Workspace(Cache(tmp_path)), []
    stage = Stage("descriptor", 1)
    first = ws.run(stage, ["a"], {"size": 2}, counting(calls), Descriptor)
    again = Workspace(Cache(tmp_path)).run(stage, ["a"], {"size": 2}, counting(calls, 2.0), Descriptor)
    assert calls == [1.0] and np.array_equal(first.descriptor, again.descriptor)
    for changed in (
        (Stage("descriptor", 2), ["a"], {"size": 2}),
        (stage, ["b"], {"size": 2}),
        (stage, ["a"], {"size": 3}),
    ):
        ws.run(*changed, counting(calls, 3.0), Descriptor)
    assert calls == [1.0, 3.0, 3.0, 3.0]


def test_computed_and_cached_work_are_timed_apart(tmp_path):
    stage = Stage("descriptor", 1)
    with Workspace(Cache(tmp_path)).measure() as cold:
        Workspace(Cache(tmp_path)).run(stage, ["a"], {}, counting([]), Descriptor)
    ws = Workspace(Cache(tmp_path))
    with ws.measure() as warm:
        ws.run(stage, ["a"], {}, counting([]), Descriptor)
    assert (cold.stages["descriptor"].computed, cold.stages["descriptor"].cached) == (1, 0)
    assert (warm.stages["descriptor"].computed, warm.stages["descriptor"].cached) == (0, 1)
    assert warm.stages["descriptor"].computed_seconds == 0
    assert warm.stages["descriptor"].cached_seconds == pytest.approx(cold.stages["descriptor"].computed_seconds)


def test_a_batch_computes_only_its_missing_items_in_one_call_and_passes_failures_through(tmp_path):
    ws, calls = Workspace(Cache(tmp_path)), []
    stage = Stage("descriptor", 1)
    ws.run(stage, ["b"], {}, counting([]), Descriptor)

    def compute(indices):
        calls.append(indices)
        return ["failed" if i == 2 else Descriptor(np.full(2, i, np.float32)) for i in indices]

    found = ws.run_batch(stage, [["a"], ["b"], ["c"]], {}, compute, Descriptor)
    assert calls == [[0, 2]] and found[2] == "failed"
    assert found[0].descriptor.tolist() == [0, 0] and found[1].descriptor.tolist() == [1, 1, 1]
    assert len(list((tmp_path / "descriptor").glob("*.npz"))) == 2  # the failure is not stored


def test_records_kept_in_memory_are_not_read_again(tmp_path):
    ws = Workspace(Cache(tmp_path), memory_items=1)
    kept, stored = Stage("superpixels", 1, keep_in_memory=True), Stage("flow", 1)
    ws.run(kept, ["a"], {}, counting([]), Descriptor)
    ws.run(stored, ["a"], {}, counting([]), Descriptor)
    with ws.measure() as timings:
        ws.run(kept, ["a"], {}, counting([]), Descriptor)
        ws.run(stored, ["a"], {}, counting([]), Descriptor)
        ws.run(kept, ["b"], {}, counting([]), Descriptor)  # the one slot now holds b: a is read from disk
        ws.run(kept, ["a"], {}, counting([]), Descriptor)
    assert "superpixels" in timings.stages and timings.stages["superpixels"].cached == 1
    assert timings.stages["flow"].cached == 1


def test_the_executor_keeps_the_order_runs_items_on_one_torch_thread_and_nested_maps_in_turn(tmp_path):
    ws = Workspace(Cache(tmp_path), executor=LocalExecutor(2))
    seen = []

    def item(value):
        inner = list(ws.map(lambda x: (threading.get_ident(), x), [1, 2]))
        seen.append((threading.get_ident(), torch.get_num_threads(), {thread for thread, _ in inner}))
        ws.run(Stage("descriptor", 1), [str(value)], {}, counting([]), Descriptor)
        return value * value

    threads = torch.get_num_threads()
    with ws.measure() as timings:
        assert list(ws.map(item, range(6))) == [0, 1, 4, 9, 16, 25]
    assert torch.get_num_threads() == threads
    assert {count for _, count, _ in seen} == {1}
    assert all(inner == {outer} for outer, _, inner in seen)  # a map inside an item runs in that item's thread
    assert timings.stages["descriptor"].computed == 6  # the workers' stage times reach the caller


def test_a_workspace_travels_to_workers_without_its_memory_or_locks(tmp_path):
    ws = Workspace(Cache(tmp_path), device="cpu", executor=LocalExecutor(2))
    ws.run(Stage("superpixels", 1, keep_in_memory=True), ["a"], {}, counting([]), Descriptor)
    copy = pickle.loads(pickle.dumps(ws))
    assert copy.cache.root == ws.cache.root and copy.device == "cpu"
    assert copy.executor.workers == 1 and not copy._memory


def test_an_unknown_executor_is_refused_naming_the_choices(monkeypatch):
    with pytest.raises(RelearnError, match="threads, processes, ray"):
        make_executor("cluster")
    monkeypatch.setenv("RELEARN_EXECUTOR", "processes")
    assert make_executor(workers=2).kind == "processes"
