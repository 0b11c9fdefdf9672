"""Where work runs: one seam, ``Executor.map(function, items)``, for threads on one machine, processes, and Ray.

Every executor returns the results in the order of the items, and every item runs with torch on one thread: the
parallelism is items side by side, never threads inside one item, so a result does not depend on the executor, on
the number of workers or on what runs beside it (torch's threaded reductions round differently from one thread).
The stages' kernels (numba, OpenCV, pydensecrf, torch) release the GIL, so threads keep every core busy.

A ``map`` called from inside a running item runs its items one after another, in that item: the workers are busy.

- ``threads`` (:class:`LocalExecutor`, the default): a thread pool of ``workers`` (default: the CPU cores torch sees;
  one on a GPU, whose kernels run in turn anyway).
- ``processes`` (:class:`ProcessExecutor`): a pool of spawned processes; the function and items must be picklable.
- ``ray`` (:class:`RayExecutor`): tasks on a Ray cluster, the one ``RAY_ADDRESS`` names, else a local one started
  with ``workers`` CPUs. Workers read the images from their paths and share the cache folder: both must be reachable
  from every machine of the cluster, and relearn installed in the same environment there.

``RELEARN_EXECUTOR`` (threads, processes or ray) chooses the executor where a command is not told.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from .errors import RelearnError

EXECUTOR_ENV = "RELEARN_EXECUTOR"
KINDS = ("threads", "processes", "ray")
RAY_INSTALL = 'pip install -e ".[ray]"'

_inside = threading.local()  # set while a thread runs an item of a LocalExecutor
_in_worker = False  # set in a worker process of a ProcessExecutor or Ray
_torch_guard = threading.Lock()
_torch_users = 0
_torch_threads = 0


@contextmanager
def one_torch_thread():
    """Torch on one thread inside the block (nested blocks and threads share it; the count is restored at the end):
    every entry point that runs stages holds it, so that no stage's result depends on torch's thread count."""
    global _torch_users, _torch_threads
    import torch

    with _torch_guard:
        if _torch_users == 0:
            _torch_threads = torch.get_num_threads()
            torch.set_num_threads(1)
        _torch_users += 1
    try:
        yield
    finally:
        with _torch_guard:
            _torch_users -= 1
            if _torch_users == 0:
                torch.set_num_threads(_torch_threads)


def _serially(function: Callable, items: list) -> Iterator:
    with one_torch_thread():
        for item in items:
            yield function(item)


class LocalExecutor:
    """Threads of this process (see the module docstring)."""

    kind = "threads"

    def __init__(self, workers: int | None = None):
        if workers is None:
            import torch

            workers = torch.get_num_threads() if _torch_users == 0 else _torch_threads
        self.workers = max(1, int(workers))

    def map(self, function: Callable, items: Iterable) -> Iterator:
        items = list(items)
        if self.workers == 1 or len(items) <= 1 or getattr(_inside, "active", False) or _in_worker:
            yield from _serially(function, items)
            return

        def run(item):
            _inside.active = True
            try:
                return function(item)
            finally:
                _inside.active = False

        with one_torch_thread(), ThreadPoolExecutor(min(self.workers, len(items))) as pool:
            yield from pool.map(run, items)

    def close(self) -> None:
        pass


def _worker_start() -> None:
    """A worker process runs one item at a time on one torch thread; maps inside it run serially."""
    global _in_worker
    import torch

    _in_worker = True
    torch.set_num_threads(1)


def _run_in_worker(function: Callable, item):
    if not _in_worker:
        _worker_start()
    return function(item)


class ProcessExecutor:
    """Spawned worker processes of this machine (see the module docstring)."""

    kind = "processes"

    def __init__(self, workers: int | None = None):
        self.workers = max(1, int(workers or os.cpu_count() or 1))
        self._pool = None

    def map(self, function: Callable, items: Iterable) -> Iterator:
        items = list(items)
        if self.workers == 1 or len(items) <= 1 or _in_worker or getattr(_inside, "active", False):
            yield from _serially(function, items)
            return
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_start
            )
        futures = [self._pool.submit(function, item) for item in items]
        try:
            for future in futures:
                yield future.result()
        finally:
            for future in futures:
                future.cancel()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


class RayExecutor:
    """Ray tasks, one CPU each (see the module docstring)."""

    kind = "ray"

    def __init__(self, workers: int | None = None, address: str | None = None):
        try:
            import ray
        except ImportError:
            raise RelearnError(f"the ray executor needs Ray: {RAY_INSTALL}") from None
        self._ray = ray
        address = address or os.environ.get("RAY_ADDRESS") or None
        self._started = not ray.is_initialized()
        if self._started:
            if address:
                ray.init(address=address, logging_level="error", log_to_driver=False)
            else:
                ray.init(
                    num_cpus=workers or os.cpu_count(),
                    include_dashboard=False,
                    logging_level="error",
                    log_to_driver=False,
                    runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}},
                )
        self.workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._task = ray.remote(num_cpus=1)(_run_in_worker)

    def map(self, function: Callable, items: Iterable) -> Iterator:
        items = list(items)
        if _in_worker or len(items) <= 1:
            yield from _serially(function, items)
            return
        shared = self._ray.put(function)  # shipped once to the object store, not once per item
        pending = [self._task.remote(shared, item) for item in items]
        done = 0
        try:
            for ref in pending:
                yield self._ray.get(ref)
                done += 1
        finally:
            for ref in pending[done:]:  # the caller stopped early or a task failed: the rest is not wanted
                self._ray.cancel(ref)

    def close(self) -> None:
        """Shut down the local cluster this executor started (a cluster it joined is left running)."""
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()


def local_executor(workers: int | None = None, device: str = "cpu") -> LocalExecutor:
    """Threads: ``workers`` of them, by default torch's thread count on CPU and one on another device."""
    if workers is None and device != "cpu" and not str(device).startswith("cpu"):
        workers = 1
    return LocalExecutor(workers)


def make_executor(kind: str | None = None, workers: int | None = None, device: str = "cpu"):
    """The executor of this ``kind`` (None: ``$RELEARN_EXECUTOR``, else threads) with ``workers`` workers (None: the
    executor's default)."""
    kind = (kind or os.environ.get(EXECUTOR_ENV) or "threads").strip().lower()
    if kind == "threads":
        return local_executor(workers, device)
    if kind == "processes":
        return ProcessExecutor(workers)
    if kind == "ray":
        return RayExecutor(workers)
    raise RelearnError(
        f"unknown executor {kind!r}: choose one of {', '.join(KINDS)} (option --executor or ${EXECUTOR_ENV})"
    )
