"""The stage runner: the one place that builds a cache key, runs a stage, and records its time.

A :class:`Workspace` holds what every stage needs: the on-disk cache, the torch device and the executor (where work
runs, relearn_core/executors.py). A stage module declares its :class:`Stage` (name and version) and calls
:meth:`Workspace.run` (one item) or :meth:`Workspace.run_batch` (several items, the missing ones computed in one call)
with the content hashes of its inputs, its parameters and a function that computes its record. The key of an entry
is (input hashes, stage name, stage version, parameters); the entry is written atomically (relearn_core/cache.py), so
a second run reuses it and an interrupted run resumes.

Timings are kept apart for what was computed now and what was read from the cache (with the compute time stored in
the entry, so a warm run can still say what the work costs): :meth:`Workspace.measure` collects them for a block of
work, including the work of tasks that ran on other threads, processes or machines.
"""

from __future__ import annotations

import contextvars
import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import (
    Any,
    Protocol,
    TypeVar,
)

import numpy as np

from .cache import Cache

MEMORY_ITEMS = 4096  #: records of ``keep_in_memory`` stages held in memory (least recently used dropped first)


class CachedRecord(Protocol):
    def to_arrays(self) -> dict[str, np.ndarray]: ...

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> CachedRecord: ...


Record = TypeVar("Record", bound=CachedRecord)
Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass(frozen=True)
class Stage:
    """A cached stage: its name (the cache folder), its version (bump it when its output changes for the same inputs
    and parameters), whether its entries are written to disk (``stored``: False for work cheaper than reading it back,
    e.g. maps read from files) and kept in memory (records that many targets read again in one run)."""

    name: str
    version: int | str
    stored: bool = True
    keep_in_memory: bool = False


def array_digest(values: np.ndarray) -> str:
    """Content hash of an array, for an input that is not a file (a base map, a label image)."""
    return hashlib.sha256(np.ascontiguousarray(values, dtype=np.float32).tobytes()).hexdigest()[:16]


@dataclass
class StageTimes:
    """One stage's work: items computed now and their seconds; items read from the cache and the seconds they took
    when they were computed."""

    computed: int = 0
    computed_seconds: float = 0.0
    cached: int = 0
    cached_seconds: float = 0.0

    def add(self, other: StageTimes) -> None:
        self.computed += other.computed
        self.computed_seconds += other.computed_seconds
        self.cached += other.cached
        self.cached_seconds += other.cached_seconds


@dataclass
class Timings:
    """Stage times by stage name."""

    stages: dict[str, StageTimes] = field(default_factory=dict)

    def stage(self, name: str) -> StageTimes:
        return self.stages.setdefault(name, StageTimes())

    def merge(self, other: Timings) -> None:
        for name, times in other.stages.items():
            self.stage(name).add(times)

    def computed_seconds(self) -> dict[str, float]:
        return {name: times.computed_seconds for name, times in self.stages.items() if times.computed}

    def summary(self) -> str:
        """One line: seconds computed per stage, then what came from the cache."""
        computed = ", ".join(f"{name} {t.computed_seconds:.1f}s" for name, t in self.stages.items() if t.computed)
        cached = ", ".join(f"{name} {t.cached}" for name, t in self.stages.items() if t.cached)
        return f"computed: {computed or 'nothing'}; read from the cache: {cached or 'nothing'}"


# the Timings that the work running in this thread (or task) records into: every measure() block around it
_collectors: contextvars.ContextVar[tuple[Timings, ...]] = contextvars.ContextVar("relearn_timings", default=())


def _record(
    stage: str, computed: int = 0, computed_seconds: float = 0.0, cached: int = 0, cached_seconds: float = 0.0
) -> None:
    for timings in _collectors.get():
        times = timings.stage(stage)
        times.add(StageTimes(computed, computed_seconds, cached, cached_seconds))


@contextmanager
def _collecting(timings: Timings):
    token = _collectors.set((*_collectors.get(), timings))
    try:
        yield timings
    finally:
        _collectors.reset(token)


class _Task:
    """``function(item)`` with the stage times it recorded, wherever it runs (a thread, a process, a Ray worker)."""

    def __init__(self, function: Callable):
        self.function = function

    def __call__(self, item):
        timings = Timings()
        token = _collectors.set((timings,))
        try:
            return self.function(item), timings
        finally:
            _collectors.reset(token)


class Workspace:
    """Cache, device and executor of a run; see the module docstring."""

    def __init__(
        self, cache: Cache | None = None, device: str = "cpu", executor=None, memory_items: int = MEMORY_ITEMS
    ):
        from .executors import local_executor

        self.cache = cache if cache is not None else Cache()
        self.device = device
        self.executor = executor if executor is not None else local_executor(device=device)
        self.memory_items = memory_items
        self._memory: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._memory_lock = threading.Lock()

    # pickled into workers: the cache folder, the device and the adapter files loaded here travel; the executor of a
    # worker runs its items in turn
    def __getstate__(self) -> dict:
        from . import plugins

        return {
            "cache": self.cache,
            "device": self.device,
            "memory_items": self.memory_items,
            "adapter_files": plugins.loaded_adapter_files(),
        }

    def __setstate__(self, state: dict) -> None:
        from . import plugins
        from .executors import LocalExecutor

        for path in state["adapter_files"]:
            plugins.load_adapter_file(path)
        self.__init__(state["cache"], state["device"], LocalExecutor(1), state["memory_items"])

    # --- running stages -------------------------------------------------------------------------------------------

    def run(
        self,
        stage: Stage,
        inputs: Sequence[str],
        params: Mapping[str, Any],
        compute: Callable[[], Record],
        record: type[Record],
    ) -> Record:
        """The record of ``stage`` for these input hashes and parameters: from memory or the cache, else computed
        (once, when several threads need it at the same time: the others wait for it)."""
        if not stage.stored:
            return self.run_batch(stage, [inputs], params, lambda indices: [compute()], record)[0]
        key_params = {"version": stage.version, **params}
        key = (stage.name, Cache.key(inputs, key_params))
        found = self._remembered(key) if stage.keep_in_memory else None
        if found is not None:
            return found
        computed = []

        def timed() -> dict[str, np.ndarray]:
            start = time.perf_counter()
            result = compute()
            seconds = time.perf_counter() - start
            computed.append(seconds)
            return {**result.to_arrays(), "seconds": np.float64(seconds)}

        arrays = self.cache.get_or_compute(stage.name, inputs, key_params, timed)
        if computed:
            _record(stage.name, computed=1, computed_seconds=computed[0])
        else:
            _record(stage.name, cached=1, cached_seconds=float(arrays.get("seconds", 0.0)))
        found = record.from_arrays(arrays)
        if stage.keep_in_memory:
            self._remember(key, found)
        return found

    def run_batch(
        self,
        stage: Stage,
        inputs: Sequence[Sequence[str]],
        params: Mapping[str, Any],
        compute: Callable[[list[int]], list],
        record: type[Record],
    ) -> list:
        """The records of ``stage`` for several items (each a sequence of input hashes). ``compute(indices)`` returns
        the records of the items at those indices; the missing items are computed in one call, each timed at its
        share of it. An element of its answer that is not a ``record`` (a failure the caller understands) is returned
        as it is and neither stored nor kept."""
        key_params = {"version": stage.version, **params}
        keys = [(stage.name, Cache.key(hashes, key_params)) for hashes in inputs]
        results: list = [self._remembered(key) if stage.keep_in_memory else None for key in keys]
        wanted = [i for i, found in enumerate(results) if found is None]
        loaded = {}
        if stage.stored:
            for i in wanted:
                arrays = self.cache.load(stage.name, inputs[i], key_params)
                if arrays is not None:
                    loaded[i] = arrays
                    _record(stage.name, cached=1, cached_seconds=float(arrays.get("seconds", 0.0)))
        missing = [i for i in wanted if i not in loaded]
        if missing:
            start = time.perf_counter()
            computed = compute(missing)
            share = (time.perf_counter() - start) / len(missing)
            _record(stage.name, computed=len(missing), computed_seconds=share * len(missing))
            for i, result in zip(missing, computed):
                if not isinstance(result, record):
                    results[i] = result
                    continue
                arrays = {**result.to_arrays(), "seconds": np.float64(share)}
                if stage.stored:
                    arrays = self.cache.get_or_compute(stage.name, inputs[i], key_params, lambda arrays=arrays: arrays)
                loaded[i] = arrays
        for i, arrays in loaded.items():
            results[i] = record.from_arrays(arrays)
            if stage.keep_in_memory:
                self._remember(keys[i], results[i])
        return results

    @contextmanager
    def timed(self, stage: str, items: int = 1):
        """Time a block of work that is not cached (a search, a prediction) as ``items`` computed items of ``stage``."""
        start = time.perf_counter()
        yield
        _record(stage, computed=items, computed_seconds=time.perf_counter() - start)

    def _remembered(self, key):
        with self._memory_lock:
            found = self._memory.get(key)
            if found is not None:
                self._memory.move_to_end(key)
            return found

    def _remember(self, key, value) -> None:
        with self._memory_lock:
            self._memory[key] = value
            self._memory.move_to_end(key)
            while len(self._memory) > self.memory_items:
                self._memory.popitem(last=False)

    # --- running work ---------------------------------------------------------------------------------------------

    def map(self, function: Callable[[Item], Result], items: Iterable[Item]) -> Iterator[Result]:
        """``function(item)`` for every item, in order, run by the executor; the stage times recorded by the work are
        added to every :meth:`measure` block around this call, wherever it ran."""
        collectors = _collectors.get()
        for result, timings in self.executor.map(_Task(function), list(items)):
            for collector in collectors:
                collector.merge(timings)
            yield result

    @contextmanager
    def measure(self) -> Iterator[Timings]:
        """Collect the stage times of the work done inside the block (a fresh :class:`Timings`)."""
        with _collecting(Timings()) as timings:
            yield timings
