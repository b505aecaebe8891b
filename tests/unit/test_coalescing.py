"""ReadCoalescer (pure): concurrent point reads become one query."""

from __future__ import annotations

import threading

from controlplane_resolver.coalescing import ReadCoalescer

from support.polling import wait_until


class GatedLoader:
    """load_many that records its batches; the first batch blocks until released."""

    def __init__(self, table: dict[str, str], fail: bool = False) -> None:
        self.table = table
        self.fail = fail
        self.batches: list[list[str]] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, keys):
        self.batches.append(list(keys))
        if len(self.batches) == 1:
            self.entered.set()
            assert self.release.wait(10)
        if self.fail:
            raise RuntimeError("database down")
        return {k: self.table[k] for k in keys if k in self.table}


def test_single_reads_return_value_or_none():
    loader = GatedLoader({"a": "A"})
    loader.release.set()
    c = ReadCoalescer(loader)
    assert c.get("a") == "A"
    assert c.get("zz") is None
    assert loader.batches == [["a"], ["zz"]]


def test_reads_queued_behind_a_query_share_the_next_one():
    table = {f"k{i}": f"v{i}" for i in range(20)}
    loader = GatedLoader(table)
    c = ReadCoalescer(loader)
    results: dict[int, object] = {}

    def read(i: int, key: str) -> None:
        results[i] = c.get(key)

    first = threading.Thread(target=read, args=(-1, "k0"))
    first.start()
    assert loader.entered.wait(5)
    # 30 callers (20 distinct keys, some repeated, one absent) arrive while
    # the first query is in flight.
    keys = [f"k{i % 20}" for i in range(29)] + ["missing"]
    threads = [threading.Thread(target=read, args=(i, k)) for i, k in enumerate(keys)]
    for t in threads:
        t.start()
    wait_until(lambda: c.waiting() == len(keys))
    loader.release.set()
    for t in [first, *threads]:
        t.join(5)
    assert len(loader.batches) == 2
    assert sorted(loader.batches[1]) == sorted(set(keys))  # identical keys: one row
    assert results[-1] == "v0"
    assert [results[i] for i in range(29)] == [f"v{i % 20}" for i in range(29)]
    assert results[29] is None
    assert c.stats.batches == 2 and c.stats.largest_batch == 21


def test_max_batch_splits_the_queue():
    loader = GatedLoader({str(i): i for i in range(10)})
    c = ReadCoalescer(loader, max_batch=4)
    first = threading.Thread(target=c.get, args=("0",))
    first.start()
    assert loader.entered.wait(5)
    threads = [threading.Thread(target=c.get, args=(str(i),)) for i in range(1, 10)]
    for t in threads:
        t.start()
    wait_until(lambda: c.waiting() == 9)
    loader.release.set()
    for t in [first, *threads]:
        t.join(5)
    assert [len(b) for b in loader.batches] == [1, 4, 4, 1]


def test_an_error_reaches_every_caller_of_the_batch_and_the_next_batch_still_runs():
    loader = GatedLoader({"a": "A"}, fail=True)
    c = ReadCoalescer(loader)
    errors: list[BaseException] = []

    def read(key: str) -> None:
        try:
            c.get(key)
        except RuntimeError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=read, args=("a",))]
    threads[0].start()
    assert loader.entered.wait(5)
    threads += [threading.Thread(target=read, args=("a",)) for _ in range(5)]
    for t in threads[1:]:
        t.start()
    wait_until(lambda: c.waiting() == 5)
    loader.release.set()
    for t in threads:
        t.join(5)
    assert len(errors) == 6
    loader.fail = False
    assert c.get("a") == "A"  # not stuck: the coalescer is idle again


def test_many_threads_many_keys_every_answer_right():
    table = {str(i): i * 10 for i in range(200)}
    calls = []
    c = ReadCoalescer(
        lambda keys: calls.append(len(keys)) or {k: table[k] for k in keys if k in table}
    )
    failures: list[str] = []

    def worker(seed: int) -> None:
        for j in range(200):
            key = str((seed * 7 + j) % 250)
            value = c.get(key)
            expected = table.get(key)
            if value != expected:
                failures.append(f"{key}: {value} != {expected}")

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not failures
    assert c.stats.keys <= 16 * 200 and sum(calls) == c.stats.keys


def test_after_a_batch_of_several_keys_the_next_leader_gathers():
    table = {str(i): i for i in range(10)}
    loader = GatedLoader(table)
    # gather_s is long: only a full batch (max_batch) can end the wait early,
    # so a test that passes proves the leader waited for the arrivals.
    c = ReadCoalescer(loader, gather_s=30.0, max_batch=4)

    # Batch 1 = {"0"} blocks; "1" and "2" queue behind it and form batch 2:
    # two keys, so the coalescer now knows reads arrive concurrently.
    lead = threading.Thread(target=c.get, args=("0",))
    lead.start()
    assert loader.entered.wait(5)
    pair = [threading.Thread(target=c.get, args=(k,)) for k in ("1", "2")]
    for t in pair:
        t.start()
    wait_until(lambda: c.waiting() == 2)
    loader.release.set()
    for t in [lead, *pair]:
        t.join(5)
    assert [sorted(b) for b in loader.batches] == [["0"], ["1", "2"]]
    assert c.stats.gathered == 0  # batch 2's leader followed a 1-key batch

    # Batch 3's leader follows a 2-key batch: it gathers until 4 keys queued.
    late = [threading.Thread(target=c.get, args=(k,)) for k in ("3", "4", "5", "6")]
    for t in late:
        t.start()
    for t in late:
        t.join(10)
    assert sorted(loader.batches[-1]) == ["3", "4", "5", "6"]
    assert c.stats.gathered == 1


def test_a_lone_read_never_gathers():
    loader = GatedLoader({"a": "A"})
    loader.release.set()
    c = ReadCoalescer(loader, gather_s=30.0)
    assert c.get("a") == "A"  # would take 30 s if it gathered
    assert c.get("a") == "A"
    assert c.stats.gathered == 0


class TwoGates:
    """load_many whose first two batches each block until their gate opens."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gates = [threading.Event(), threading.Event()]

    def __call__(self, keys):
        self.batches.append(list(keys))
        if len(self.batches) <= len(self.gates):
            assert self.gates[len(self.batches) - 1].wait(10)
        return {k: k.upper() for k in keys}


def test_a_detached_batch_is_abandoned_only_once_every_caller_has_gone():
    loader = TwoGates()
    abandoned: list[list[str]] = []
    c = ReadCoalescer(
        loader,
        start=lambda work: threading.Thread(target=work, daemon=True).start(),
        abandon=lambda: abandoned.append(loader.batches[-1]),
    )
    results: dict[str, object] = {}

    def get(key: str, timeout: float) -> None:
        try:
            results[key] = c.get(key, timeout=timeout)
        except Exception as exc:
            results[key] = type(exc).__name__

    # "x" loads first; "a" and "b" queue meanwhile and share the next batch.
    first = threading.Thread(target=get, args=("x", 10))
    first.start()
    wait_until(lambda: loader.batches == [["x"]], timeout=5)
    callers = [
        threading.Thread(target=get, args=("a", 0.5)),
        threading.Thread(target=get, args=("b", 3.0)),
    ]
    for t in callers:
        t.start()
    wait_until(lambda: c.waiting() == 2, timeout=5)
    loader.gates[0].set()
    first.join(5)
    assert results["x"] == "X"
    wait_until(lambda: loader.batches[1:] == [["a", "b"]], timeout=5)
    callers[0].join(5)
    # "a" gave up while "b" still waits: the batch keeps loading for "b".
    assert results["a"] == "WaitTimeout"
    assert abandoned == [] and c.abandoned == 0
    callers[1].join(10)
    # "b" gave up too: nobody waits, the batch is abandoned, once.
    assert results["b"] == "WaitTimeout"
    assert abandoned == [["a", "b"]] and c.abandoned == 1
    loader.gates[1].set()
