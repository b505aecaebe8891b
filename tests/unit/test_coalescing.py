"""ReadCoalescer (pure): concurrent point reads become one query."""

from __future__ import annotations

import threading

from controlplane_resolver import callinfo
from controlplane_resolver.coalescing import ReadCoalescer, WaitTimeout

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


def test_a_reader_whose_caller_has_gone_stops_waiting():
    """A read on behalf of a call whose caller has gone (the call's
    ``is_active`` says so) ends at its next look, long before its timeout;
    nobody else waits, so the batch is abandoned."""
    loader = GatedLoader({"a": "A"})
    abandoned: list[int] = []
    c = ReadCoalescer(
        loader,
        start=lambda work: threading.Thread(target=work, daemon=True).start(),
        abandon=lambda: abandoned.append(1),
    )
    caller_waits = threading.Event()
    caller_waits.set()
    outcome: list[str] = []

    def read() -> None:
        callinfo.begin(None, caller_waits.is_set)
        try:
            outcome.append(repr(c.get("a", timeout=100)))
        except WaitTimeout as exc:
            outcome.append(str(exc))
        finally:
            callinfo.end()

    reader = threading.Thread(target=read)
    reader.start()
    assert loader.entered.wait(5)
    caller_waits.clear()  # the caller cancels
    reader.join(10)
    assert outcome == ["gave up waiting for a batched read (its caller has gone)"]
    assert abandoned == [1] and c.abandoned == 1
    loader.release.set()


class ThreadRecorder:
    """load_many that records, per batch, its keys and whether it ran on a
    thread ``start`` gave; a batch whose first key is in ``gated`` blocks
    until that key's event is set."""

    def __init__(self, gated: tuple[str, ...] = ()) -> None:
        self.batches: list[tuple[list[str], bool]] = []
        self.entered = {key: threading.Event() for key in gated}
        self.release = {key: threading.Event() for key in gated}

    def __call__(self, keys):
        on_start_thread = threading.current_thread().name.startswith("started-")
        self.batches.append((list(keys), on_start_thread))
        if keys[0] in self.release:
            self.entered[keys[0]].set()
            assert self.release[keys[0]].wait(10)
        return {k: k.upper() for k in keys}


def started(work) -> None:
    threading.Thread(target=work, name=f"started-{id(work)}", daemon=True).start()


def test_while_inline_allows_it_a_batch_runs_on_its_callers_thread():
    loader = ThreadRecorder()
    c = ReadCoalescer(loader, start=started, inline=lambda: True)
    assert c.get("a", timeout=5) == "A"
    assert loader.batches == [(["a"], False)]
    assert c.stats.inline == 1


def test_when_inline_refuses_a_batch_runs_on_starts_thread():
    loader = ThreadRecorder()
    c = ReadCoalescer(loader, start=started, inline=lambda: False)
    assert c.get("a", timeout=5) == "A"
    assert loader.batches == [(["a"], True)]
    assert c.stats.inline == 0


def test_the_lead_moves_between_threads_as_inline_changes_its_mind():
    """Batch 1 runs on start's thread (the database was not answering);
    batch 2 queues meanwhile and, the database answering again, runs on a
    caller's thread; batch 3 queues behind it and, the database no longer
    answering, goes back to start's thread. Every caller gets its answer."""
    loader = ThreadRecorder(gated=("x", "a"))
    answering = [False]
    c = ReadCoalescer(loader, start=started, inline=lambda: answering[0])
    results: dict[str, object] = {}

    def get(key: str) -> None:
        results[key] = c.get(key, timeout=10)

    threads = [threading.Thread(target=get, args=("x",))]
    threads[0].start()
    assert loader.entered["x"].wait(5)
    threads.append(threading.Thread(target=get, args=("a",)))
    threads[-1].start()
    wait_until(lambda: c.waiting() == 1)
    answering[0] = True
    loader.release["x"].set()
    assert loader.entered["a"].wait(5)
    threads.append(threading.Thread(target=get, args=("b",)))
    threads[-1].start()
    wait_until(lambda: c.waiting() == 1)
    answering[0] = False
    loader.release["a"].set()
    for t in threads:
        t.join(5)
    assert results == {"x": "X", "a": "A", "b": "B"}
    assert loader.batches == [(["x"], True), (["a"], False), (["b"], True)]


def test_a_reader_leaves_at_its_deadline_while_a_caller_leads_and_the_lead_still_passes_on():
    loader = ThreadRecorder(gated=("x",))
    c = ReadCoalescer(loader, start=started, inline=lambda: True)
    results: dict[str, object] = {}

    def get(key: str, timeout: float) -> None:
        try:
            results[key] = c.get(key, timeout=timeout)
        except Exception as exc:
            results[key] = type(exc).__name__

    leader = threading.Thread(target=get, args=("x", 10))
    leader.start()
    assert loader.entered["x"].wait(5)
    late = threading.Thread(target=get, args=("a", 0.2))
    late.start()
    late.join(5)
    assert results["a"] == "WaitTimeout"
    after = threading.Thread(target=get, args=("b", 10))
    after.start()
    wait_until(lambda: c.waiting() == 1)
    loader.release["x"].set()
    for t in (leader, after):
        t.join(5)
    assert results == {"x": "X", "a": "WaitTimeout", "b": "B"}
    assert loader.batches == [(["x"], False), (["b"], False)]
