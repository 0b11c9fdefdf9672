"""The on-disk cache: entries are reused, damaged ones recomputed, and one entry is computed once across threads."""

import threading
import time

import numpy as np

from relearn_core.cache import Cache


def test_an_entry_needed_by_two_threads_at_once_is_computed_once(tmp_path):
    cache = Cache(tmp_path)
    calls = []
    start = threading.Barrier(2)
    results = [None, None]

    def compute():
        calls.append(threading.get_ident())
        time.sleep(0.2)  # long enough for the other thread to ask for the same entry meanwhile
        return {"values": np.arange(5)}

    def ask(slot):
        start.wait()
        results[slot] = cache.get_or_compute("stage", ["a", "b"], {"p": 1}, compute)

    threads = [threading.Thread(target=ask, args=(slot,)) for slot in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    for arrays in results:
        np.testing.assert_array_equal(arrays["values"], np.arange(5))


def test_a_damaged_entry_is_computed_again(tmp_path):
    cache = Cache(tmp_path)
    cache.get_or_compute("stage", ["a"], {}, lambda: {"values": np.ones(3)})
    cache.path("stage", ["a"], {}).write_bytes(b"not an npz")
    arrays = cache.get_or_compute("stage", ["a"], {}, lambda: {"values": np.zeros(3)})
    np.testing.assert_array_equal(arrays["values"], np.zeros(3))
    np.testing.assert_array_equal(cache.load("stage", ["a"], {})["values"], np.zeros(3))


def test_entries_are_compressed_npz_files_that_numpy_reads_back(tmp_path):
    import io

    from relearn_core.cache import npz_bytes

    smooth = np.add.outer(np.arange(200.0), np.arange(300.0)).astype(np.float32)
    arrays = {"flow": smooth, "labels": (smooth // 37).astype(np.int32), "seconds": np.float64(0.25)}
    data = npz_bytes(arrays)
    assert len(data) < sum(a.nbytes for a in arrays.values()) / 2
    with np.load(io.BytesIO(data), allow_pickle=False) as stored:
        assert sorted(stored.files) == ["flow", "labels", "seconds"]
        for name, values in arrays.items():
            np.testing.assert_array_equal(stored[name], values)
            assert stored[name].dtype == np.asarray(values).dtype
    cache = Cache(tmp_path)
    assert cache.get_or_compute("stage", ["a"], {}, lambda: arrays)["flow"] is smooth
    np.testing.assert_array_equal(cache.load("stage", ["a"], {})["labels"], arrays["labels"])
