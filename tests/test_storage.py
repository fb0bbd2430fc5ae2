"""The backend conformance suite: every backend behaves the same."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster
from redis_server import RedisServer
from stores import SharedMemoryBackend, append

from flask_river_ml.errors import StoreUnavailable
from flask_river_ml.storage import Backend, create_backend
from flask_river_ml.storage.base import EXISTS, TAKEN, Change, Guard, Outcome, Timing
from flask_river_ml.storage.redis_cluster import RedisClusterBackend

#: The URL of each backend the conformance suite runs against (a relative path: in the test's
#: folder; {test}: a name of the test's own; {redis}: the shared redis server), the documented
#: custom backend included.
URLS = {
    "memory": "memory://",
    "shelve": "sqlite:///store.sqlite3",
    "redis": "{redis}",
    SharedMemoryBackend.name: "shared-memory://{test}",
}


@pytest.fixture(params=[*URLS, "redis-cluster"])
def backend_name(request) -> str:
    return request.param


def redis_backend(url: str, prefix: str) -> Backend:
    return create_backend(url, root="unused", prefix=prefix)


def shelve_at(path: Path) -> Backend:
    return create_backend(f"sqlite:///{path}", root="unused", prefix="unused")


@pytest.fixture
def backend(request, backend_name, tmp_path, redis_prefix) -> Iterator[Backend]:
    if backend_name == "redis-cluster":
        # The suite's keys carry no hash tag, and some commits write several: its prefix is one
        # (a prefix from_url refuses), so that every key of the test falls in one slot, as the
        # keys of one model do.
        client = RedisCluster.from_url(request.getfixturevalue("redis_cluster").replace("+cluster", ""))
        store: Backend = RedisClusterBackend(client, prefix="{" + redis_prefix + "}")
    else:
        shared = request.getfixturevalue("redis_url") if backend_name == "redis" else None
        url = URLS[backend_name].format(test=uuid.uuid4().hex, redis=shared)
        store = create_backend(url, root=str(tmp_path), prefix=redis_prefix)
    yield store
    store.close()


def test_name(backend, backend_name):
    # A cluster is served by the redis backend, with another client.
    assert backend.name == backend_name.removesuffix("-cluster")


def test_get_set_delete(backend):
    assert backend.get("a") is None
    backend.set("a", b"1")
    backend.set("a", b"2")
    assert backend.get("a") == b"2"
    backend.set("b", b"")
    assert backend.get("b") == b""
    assert backend.delete("a", "b", "missing") == 2
    assert backend.get("a") is None


def test_binary_values_round_trip(backend):
    value = bytes(range(256)) * 100
    backend.set("blob", value)
    assert backend.get("blob") == value


def test_ttl_expires(backend):
    backend.set("short", b"x", ttl=0.2)
    backend.set("long", b"y", ttl=60)
    assert backend.get("short") == b"x"
    time.sleep(0.3)
    assert backend.get("short") is None
    assert backend.keys("") == ["long"]
    assert backend.add("short", b"again")


def test_add_only_when_absent(backend):
    assert backend.add("k", b"1")
    assert not backend.add("k", b"2")
    assert backend.get("k") == b"1"


def test_a_waiting_value_is_taken_once(backend):
    """Of eight commits that take one value, exactly one is written, with its record."""
    backend.set("model", b"g")
    backend.set("id", b"record")
    outcomes = []

    def take(worker: int) -> None:
        change = Change(record=f"{worker}".encode(), take=("id", b"record"))
        outcomes.append(backend.commit(change, Guard("log", None, "model", b"g")))

    threads = [threading.Thread(target=take, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(o.written for o in outcomes) == [False] * 7 + [True]
    assert {o.conflict for o in outcomes if not o.written} == {TAKEN}
    assert backend.get("id") is None and len(backend.read("log")) == 1


def test_a_take_of_a_changed_value_writes_nothing(backend):
    backend.set("model", b"g")
    backend.set("id", b"other")
    change = Change(record=b"r", sets=(("k", b"v", None),), take=("id", b"record"), observes=(Timing("t", 1, 0.5),))
    assert backend.commit(change, Guard("log", None, "model", b"g")) == Outcome(False, conflict=TAKEN)
    assert (backend.get("id"), backend.get("k"), backend.read("log"), backend.observed("t")) == (
        b"other",
        None,
        [],
        None,
    )


def test_a_create_is_made_only_where_its_key_is_absent(backend):
    backend.set("model", b"g")
    first = Change(create=("waiting", b"1", 60), observes=(Timing("t", 5, 0.5),))
    assert backend.commit(first, Guard("log", 0, "model", b"g")).written
    second = Change(create=("waiting", b"2", 60), observes=(Timing("t", 5, 0.5),))
    assert backend.commit(second, Guard("log", 0, "model", b"g")) == Outcome(False, conflict=EXISTS)
    assert backend.get("waiting") == b"1" and backend.observed("t") == (1, 5, 5.0)
    backend.set("short", b"x", ttl=0.05)
    time.sleep(0.1)
    assert backend.commit(Change(create=("short", b"y", None))).written  # an expired key is absent
    assert backend.get("short") == b"y"


def test_many_takes_and_creates_are_made_together_or_not_at_all(backend):
    """A batch's waiting predictions: every key of ``takes`` must still hold its value and every
    key of ``creates`` be absent; one that cannot be made refuses the whole change."""
    backend.set("model", b"g")
    for key in ("a", "b", "c"):
        backend.set(key, key.encode())
    guard = Guard("log", None, "model", b"g")
    refused = [
        Change(record=b"r", takes=(("a", b"a"), ("b", b"other")), creates=(("x", b"1", 60),)),
        Change(record=b"r", takes=(("a", b"a"),), creates=(("x", b"1", 60), ("c", b"2", 60))),
    ]
    assert [backend.commit(change, guard).conflict for change in refused] == [TAKEN, EXISTS]
    assert [backend.get(key) for key in ("a", "b", "c", "x")] == [b"a", b"b", b"c", None]
    assert backend.read("log") == []
    change = Change(record=b"r", takes=(("a", b"a"), ("b", b"b")), creates=(("x", b"1", 60), ("y", b"2", None)))
    assert backend.commit(change, guard) == Outcome(True, 1)
    assert [backend.get(key) for key in ("a", "b", "c", "x", "y")] == [None, None, b"c", b"1", b"2"]


def test_one_commit_observes_one_key_many_times(backend):
    """A batch times each of its samples: the count, total and weighted mean move as they would
    after as many commits of one observation each."""
    backend.commit(Change(observes=(Timing("t", 10, 0.5),)))
    backend.commit(
        Change(observes=(Timing("t", 20, 0.5), Timing("u", 1, 0.5), Timing("t", 30, 0.5), Timing("t", 40, 0.5)))
    )
    assert backend.observed("t") == (4, 100, 0.5 * 40 + 0.25 * 30 + 0.125 * 20 + 0.125 * 10)
    assert backend.observed("u") == (1, 1, 1.0)


def test_keys_by_prefix_sorted(backend):
    for key in ["model:b", "model:a", "modelx", "stats:a", "model:%_"]:
        backend.set(key, b"")
    assert backend.keys("model:") == ["model:%_", "model:a", "model:b"]
    assert backend.keys("model:%") == ["model:%_"]
    assert backend.keys("nothing") == []


def test_update_is_atomic(backend):
    def work():
        for _ in range(50):
            backend.update("doc", lambda old: old + b"x" if old else b"x")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert backend.get("doc") == b"x" * 200


def test_observe_counts_totals_and_weighs(backend):
    assert backend.observed("t") is None
    for value in (10, 20, 30):
        backend.observe("t", value, 0.3)
    count, total, mean = backend.observed("t")
    assert (count, total) == (3, 60)
    assert mean == pytest.approx(18.1)
    assert backend.keys("t") == []
    assert backend.delete("t") == 1
    assert backend.observed("t") is None


def test_a_commit_takes_back_a_call_an_earlier_one_timed(backend):
    """A retraction takes its duration out of the count and the total exactly, and out of the
    weighted mean while its commit's step is still the last; nothing left reads as empty."""
    for value in (10, 20):
        backend.observe("t", value, 0.3)
    after_two = backend.observed("t")
    timing = Timing("t", 30, 0.3)
    tally = backend.commit(Change(observes=(timing,))).tallies[0]
    assert tally == (3, 60)
    assert backend.commit(Change(retracts=((timing, tally),))) == Outcome(True)
    count, total, mean = backend.observed("t")
    assert (count, total) == after_two[:2] and mean == pytest.approx(after_two[2])
    # Timed again, then another call comes in between: the mean keeps the duration taken back.
    tally = backend.commit(Change(observes=(timing,))).tallies[0]
    backend.observe("t", 40, 0.3)
    moved = backend.observed("t")
    backend.commit(Change(retracts=((timing, tally),)))
    count, total, mean = backend.observed("t")
    assert (count, total) == (3, 70) and mean == pytest.approx(moved[2])
    # The only call taken back: the timing reads as never observed, and starts again.
    only = Timing("u", 7, 0.3)
    backend.commit(Change(retracts=((only, backend.commit(Change(observes=(only,))).tallies[0]),)))
    assert backend.observed("u") == (0, 0, 0.0)
    backend.observe("u", 5, 0.3)
    assert backend.observed("u") == (1, 5, 5.0)
    # A timing gone meanwhile (its model deleted) stays gone; a guard that fails changes nothing.
    backend.commit(Change(retracts=((Timing("gone", 3, 0.3), (1, 3)),)))
    assert backend.observed("gone") is None
    backend.set("model", b"g2")
    refused = backend.commit(Change(retracts=((Timing("u", 5, 0.3), (1, 5)),)), Guard("log", None, "model", b"g1"))
    assert refused == Outcome(False) and backend.observed("u") == (1, 5, 5.0)


def test_a_commit_that_times_many_calls_of_one_key_takes_them_back_last_first(backend):
    """As a batch does: one commit times a call per sample under one key, each with its tally;
    taken back last first, the timing is what it was before, count, total and mean."""
    backend.observe("t", 10, 0.3)
    before = backend.observed("t")
    timings = tuple(Timing("t", duration, 0.3) for duration in (4, 9, 2, 30))
    outcome = backend.commit(Change(observes=timings))
    assert outcome.tallies == ((2, 14), (3, 23), (4, 25), (5, 55))
    assert backend.observed("t")[:2] == (5, 55)
    backend.commit(Change(retracts=tuple(zip(reversed(timings), reversed(outcome.tallies), strict=True))))
    count, total, mean = backend.observed("t")
    assert (count, total) == before[:2] and mean == pytest.approx(before[2])


def test_a_timing_of_many_calls_moves_as_that_many_timings_of_one(backend):
    """A batch's samples are timed as calls of one duration each: one timing of ``calls``
    calls leaves the count, the total and the weighted mean as that many single calls do,
    from an empty timing and from one with calls in it."""
    for key in ("one by one", "at once"):
        backend.observe(key, 50, 0.3)
    for _ in range(7):
        backend.observe("one by one", 12, 0.3)
    outcome = backend.commit(Change(observes=(Timing("at once", 12, 0.3, 7), Timing("fresh", 9, 0.3, 4))))
    assert outcome.tallies == ((8, 134), (4, 36))
    count, total, mean = backend.observed("at once")
    expected = backend.observed("one by one")
    assert (count, total) == expected[:2] and mean == pytest.approx(expected[2], rel=1e-12)
    assert backend.observed("fresh") == (4, 36, 9.0)


def test_a_timing_of_many_calls_is_taken_back_whole(backend):
    """Taken back, a timing of many calls leaves the timing as it was before them, count,
    total and mean; a batch so long that the mean before it kept next to no weight through its
    step loses its count and total exactly and keeps a finite mean, their duration."""
    backend.observe("t", 100, 0.3)
    before = backend.observed("t")
    timing = Timing("t", 40, 0.3, 6)
    outcome = backend.commit(Change(observes=(timing,)))
    backend.commit(Change(retracts=((timing, outcome.tallies[0]),)))
    count, total, mean = backend.observed("t")
    assert (count, total) == before[:2] and mean == pytest.approx(before[2], rel=1e-9)
    batch = Timing("t", 40, 0.3, 1000)
    outcome = backend.commit(Change(observes=(batch,)))
    assert backend.observed("t")[:2] == (1001, 40_100)
    backend.commit(Change(retracts=((batch, outcome.tallies[0]),)))
    count, total, mean = backend.observed("t")
    assert (count, total) == (1, 100) and mean == pytest.approx(40.0)
    # Calls that took no time at all (a batch shorter in nanoseconds than its samples).
    instant = Timing("t", 0, 0.3, 5)
    backend.commit(Change(retracts=((instant, backend.commit(Change(observes=(instant,))).tallies[0]),)))
    assert backend.observed("t")[:2] == (1, 100)
    # All of it taken back: empty, as after the last single call taken back.
    only = Timing("u", 8, 0.3, 3)
    backend.commit(Change(retracts=((only, backend.commit(Change(observes=(only,))).tallies[0]),)))
    assert backend.observed("u") == (0, 0, 0.0)


@pytest.mark.parametrize(
    ("shares", "before"),
    [
        # A batch's two timings: 38 calls one nanosecond longer, then 962 (as a failed batch
        # is taken back, last first): the mean kept no weight through the 962.
        ((Timing("t", 5_001, 0.3, 38), Timing("t", 5_000, 0.3, 962)), 100_000),
        # Each step alone could be undone (0.7 ** 38 is above a millionth), both together not.
        ((Timing("t", 10**9, 0.3, 38), Timing("t", 10**9, 0.3, 38)), 1_000),
    ],
)
def test_timings_taken_back_together_undo_the_mean_only_while_it_kept_weight(backend, shares, before):
    """The weights the mean kept through the steps taken back multiply: once one step is not
    undone, no step before it is, and the mean stays between the one before and the shares'
    duration instead of being divided out of rounding noise; count and total come back
    exactly."""
    for _ in range(10):
        backend.observe("t", before, 0.3)
    outcome = backend.commit(Change(observes=shares))
    backend.commit(Change(retracts=tuple(zip(reversed(shares), reversed(outcome.tallies), strict=True))))
    count, total, mean = backend.observed("t")
    assert (count, total) == (10, 10 * before)
    low, high = sorted((before, min(timing.duration for timing in shares)))
    assert low <= mean <= high * (1 + 1e-9)


def test_observe_counts_across_threads(backend):
    def work():
        for _ in range(50):
            backend.observe("t", 1, 0.5)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert backend.observed("t") == (200, 200, 1.0)


def test_log_append_read_trim(backend):
    assert backend.read("log") == []
    assert [append(backend, "log", bytes([i])) for i in range(5)] == [1, 2, 3, 4, 5]
    assert backend.read("log", 3) == [(4, b"\x03"), (5, b"\x04")]
    backend.trim("log", 4)
    assert backend.read("log") == [(4, b"\x03"), (5, b"\x04")]
    # Numbers are not reused after a trim.
    assert append(backend, "log", b"x") == 6
    assert backend.read("other") == []


def test_delete_log_restarts_numbering(backend):
    append(backend, "log", b"a")
    append(backend, "log", b"b")
    backend.delete_log("log")
    assert backend.read("log") == []
    assert append(backend, "log", b"c") == 1


def test_concurrent_appends_get_distinct_numbers(backend):
    numbers: list[int] = []

    def work(worker: int):
        for i in range(50):
            numbers.append(append(backend, "log", f"{worker}-{i}".encode()))

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(numbers) == list(range(1, 201))
    records = backend.read("log")
    assert [seq for seq, _ in records] == list(range(1, 201))
    assert len({record for _, record in records}) == 200


def test_lock_excludes(backend):
    inside = []
    overlaps = []

    def work():
        for _ in range(20):
            with backend.lock("x"):
                inside.append(1)
                if len(inside) > 1:
                    overlaps.append(1)
                time.sleep(0.0005)
                inside.pop()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlaps == []


def test_lock_timeout(backend):
    with backend.lock("held"):
        errors = []

        def other():
            try:
                with backend.lock("held", timeout=0.1):
                    pass
            except TimeoutError as error:
                errors.append(error)

        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        assert len(errors) == 1
    # Other names are independent, and the lock is free again.
    with backend.lock("held", timeout=0.1), backend.lock("other", timeout=0.1):
        pass


def test_shelve_is_shared_between_instances(tmp_path):
    """Two shelve backends on one path see each other's writes (as two processes would)."""
    first, second = shelve_at(tmp_path / "s"), shelve_at(tmp_path / "s")
    first.set("k", b"v")
    assert second.get("k") == b"v"
    assert append(first, "log", b"1") == 1
    assert append(second, "log", b"2") == 2
    assert [seq for seq, _ in first.read("log")] == [1, 2]
    first.close()
    second.close()


@pytest.mark.redis
def test_redis_keeps_every_key_under_its_prefix(redis_url, redis_prefix):
    """Two apps (prefixes) share a database without seeing each other's keys."""
    import redis

    first, second = redis_backend(redis_url, redis_prefix + "a:"), redis_backend(redis_url, redis_prefix + "b:")
    first.set("model:x", b"1", ttl=60)
    append(first, "log:x", b"r")
    first.observe("stats:x", 5, 0.3)
    with first.lock("model:x"):
        client = redis.Redis.from_url(redis_url)
        # The keys of the value, the append's guard, log, log head, timing and lock, and
        # nothing outside the prefix.
        marker = redis_prefix.split(":")[1]
        found = list(client.scan_iter(match=f"*{marker}*"))
        assert len(found) == 6 and all(key.startswith(redis_prefix.encode()) for key in found)
        client.close()
    assert second.keys("") == [] and second.get("model:x") is None and second.read("log:x") == []
    assert first.keys("") == ["model:x", "tests:unchanged"]
    first.close()
    second.close()


def test_peek_reads_a_key_and_a_log_tail(backend):
    assert backend.peek("k", "log") == (None, [])
    backend.set("k", b"v")
    for record in (b"a", b"b", b"c"):
        append(backend, "log", record)
    assert backend.peek("k", "log", 1) == (b"v", [(2, b"b"), (3, b"c")])


def test_a_commit_sets_and_observes_together(backend):
    change = Change(sets=(("a", b"1", 60), ("b", b"2", None)), observes=(Timing("t", 7, 0.3),))
    assert backend.commit(change) == Outcome(True, tallies=((1, 7),))
    assert (backend.get("a"), backend.get("b")) == (b"1", b"2")
    assert backend.observed("t") == (1, 7, 7.0)
    backend.commit(Change(sets=(("short", b"x", 0.05),), observes=(Timing("t", 3, 0.5), Timing("u", 4, 0.5))))
    assert backend.observed("t") == (2, 10, 5.0) and backend.observed("u") == (1, 4, 4.0)
    time.sleep(0.1)
    assert backend.get("short") is None
    assert backend.commit(Change()) == Outcome(True)


def test_a_record_needs_a_guard_to_name_its_log(backend):
    with pytest.raises(ValueError, match="guard"):
        backend.commit(Change(record=b"r"))


def test_guarded_commits_happen_only_on_the_head_and_value_seen(backend):
    """A commit under a guard: written while it holds; otherwise nothing, and the records the
    writer had not seen, or none when the guarded value changed."""

    def attempts(record: bytes, head: int, value: bytes) -> list:
        guard = Guard("log", head, "model", value)
        change = Change(record=record, sets=(("k", record, None),), observes=(Timing("t", 1, 0.5),))
        before = (backend.get("k"), backend.observed("t"), backend.read("log"))
        outcome = backend.commit(change, guard)
        if not outcome.written:
            assert (backend.get("k"), backend.observed("t"), backend.read("log")) == before
        else:
            assert backend.get("k") == record and backend.read("log")[-1] == (outcome.seq, record)
        assert outcome.conflict is None
        return [outcome.seq, outcome.unseen]

    backend.set("model", b"g1")
    assert attempts(b"a", 0, b"g1") == [1, []]
    # The log moved on.
    assert attempts(b"b", 0, b"g1") == [None, [(1, b"a")]]
    assert append(backend, "log", b"c") == 2
    assert attempts(b"d", 1, b"g1") == [None, [(2, b"c")]]
    # The value changed, is gone or expired.
    assert attempts(b"d", 2, b"g2") == [None, []]
    backend.delete("model")
    assert attempts(b"d", 2, b"g1") == [None, []]
    backend.set("model", b"g1", ttl=0.05)
    time.sleep(0.1)
    assert attempts(b"d", 2, b"g1") == [None, []]
    backend.set("model", b"g1")
    assert attempts(b"d", 2, b"g1") == [3, []]
    # After a trim, only the records still kept come back.
    append(backend, "log", b"e")
    backend.trim("log", 4)
    assert attempts(b"f", 1, b"g1") == [None, [(4, b"e")]]
    assert backend.read("log") == [(4, b"e")]
    assert backend.observed("t") == (2, 2, 1.0)


def test_an_append_answers_with_the_records_after_those_its_writer_saw(backend):
    """A commit whose guard says the last record its writer saw appends wherever the log is,
    and answers with the records between that one and its own, read in the same step; a
    refused one appends nothing and answers none."""
    backend.set("model", b"g")

    def appended(record: bytes, after: int | None, value: bytes = b"g") -> list:
        outcome = backend.commit(
            Change(record=record, observes=(Timing("t", 1, 0.5),)), Guard("log", None, "model", value, after)
        )
        return [outcome.written, outcome.seq, outcome.unseen]

    assert appended(b"a", 0) == [True, 1, []]
    assert appended(b"b", 1) == [True, 2, []]
    assert appended(b"c", 0) == [True, 3, [(1, b"a"), (2, b"b")]]
    assert appended(b"d", 2) == [True, 4, [(3, b"c")]]
    # Without saying, none: the writer reads them itself.
    assert appended(b"e", None) == [True, 5, []]
    # After a trim, only the records still kept come back: the writer sees the gap.
    backend.trim("log", 4)
    assert appended(b"f", 1) == [True, 6, [(4, b"d"), (5, b"e")]]
    # A commit refused by its guarded value appends nothing.
    assert appended(b"g", 1, b"other") == [False, None, []]
    assert backend.read("log") == [(4, b"d"), (5, b"e"), (6, b"f")]
    assert backend.observed("t") == (6, 6, 1.0)


def test_concurrent_appends_each_answer_exactly_the_records_before_them(backend):
    """Writers that append without a head, each saying the last record it had seen and then
    taking in the records its commit answered with, see every record once, in order."""
    backend.set("model", b"g")
    seen: dict[int, list[int]] = {}

    def work(worker: int):
        after, mine = 0, []
        for i in range(40):
            outcome = backend.commit(Change(record=f"{worker}-{i}".encode()), Guard("log", None, "model", b"g", after))
            assert outcome.written and outcome.seq is not None
            mine += [seq for seq, _ in outcome.unseen] + [outcome.seq]
            after = outcome.seq
        seen[worker] = mine

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for mine in seen.values():
        assert mine == list(range(1, mine[-1] + 1))
    assert [seq for seq, _ in backend.read("log")] == list(range(1, 161))


@pytest.mark.redis
def test_redis_commits_survive_a_server_that_lost_its_scripts(tmp_path):
    """After SCRIPT FLUSH (or a restart) every commit is made once."""
    with RedisServer(tmp_path / "redis") as server:
        backend = redis_backend(server.url, "p:")
        client = redis.Redis(port=server.port)
        backend.set("model", b"g")
        for round_ in range(3):
            client.script_flush()
            backend.commit(Change(sets=(("a", str(round_).encode(), 60),), observes=(Timing("t", 10, 0.5),)))
            client.script_flush()
            guard = Guard("log", round_, "model", b"g")
            written = backend.commit(Change(record=b"r", observes=(Timing("u", 4, 0.5),)), guard)
            assert written == Outcome(True, round_ + 1, tallies=((round_ + 1, 4 * (round_ + 1)),))
            assert backend.get("a") == str(round_).encode()
        assert backend.observed("t") == (3, 30, 10.0)
        assert backend.observed("u") == (3, 12, 4.0)
        client.close()
        backend.close()


def test_concurrent_guarded_appends_never_skip_a_record(backend):
    """Writers that retry on the records they had not seen give out every number once, each
    written by a writer that had seen every record before it."""
    backend.set("model", b"g")
    written: list[tuple[int, int]] = []

    def work(worker: int):
        head = 0
        for i in range(40):
            while True:
                outcome = backend.commit(Change(record=f"{worker}-{i}".encode()), Guard("log", head, "model", b"g"))
                if outcome.written:
                    assert outcome.seq is not None
                    written.append((outcome.seq, head))
                    head = outcome.seq
                    break
                assert outcome.unseen and outcome.unseen[0][0] == head + 1
                head = outcome.unseen[-1][0]

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(written) == [(seq, seq - 1) for seq in range(1, 161)]
    assert [seq for seq, _ in backend.read("log")] == list(range(1, 161))


@pytest.mark.redis
def test_redis_lock_is_renewed_while_its_holder_works(redis_url, redis_prefix, monkeypatch):
    """A change that takes longer than the lock's expiry keeps the lock to its end."""
    from flask_river_ml.storage import redis as redis_module

    monkeypatch.setattr(redis_module, "_LOCK_EXPIRY", 0.3)
    holder, other = redis_backend(redis_url, redis_prefix), redis_backend(redis_url, redis_prefix)
    with holder.lock("model:m"):
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            with pytest.raises(TimeoutError), other.lock("model:m", timeout=0.05):
                pass
    with other.lock("model:m", timeout=1.0):
        pass
    holder.close()
    other.close()


@pytest.mark.redis
def test_redis_append_without_its_head_gives_out_no_number(redis_url, redis_prefix):
    """A log whose head key was lost (evicted) refuses appends rather than number a record
    that is not there; the head stays where it was."""
    import redis

    backend = redis_backend(redis_url, redis_prefix)
    backend.set("model", b"g")
    assert append(backend, "log", b"a") == 1
    assert backend.commit(Change(record=b"b"), Guard("log", 1, "model", b"g")) == Outcome(True, 2)
    client = redis.Redis.from_url(redis_url)
    client.delete(redis_prefix + "h:log")
    with pytest.raises(redis.ResponseError):
        append(backend, "log", b"c")
    with pytest.raises(redis.ResponseError):
        backend.commit(Change(record=b"c"), Guard("log", None, "model", b"g"))
    assert client.get(redis_prefix + "h:log") is None
    assert backend.read("log") == [(1, b"a"), (2, b"b")]
    client.close()
    backend.close()


# --- a store that cannot be reached or written -------------------------------------------------
#
# Every backend method raises StoreUnavailable, naming the store and never a password, within
# a few seconds, when the store is down, hangs or refuses writes; the same backend object works
# again once the store does. The faults are real: a private redis stopped, filled, made a
# replica or unable to save; an SQLite file made immutable (chattr +i: as root, chmod would not
# stop this process), its folder removed, locked by another writer, overwritten with garbage.

#: One call of each store method, on keys and logs of their own.
STORE_CALLS: dict[str, Callable[[Backend], object]] = {
    "get": lambda b: b.get("k"),
    "set": lambda b: b.set("k", b"v"),
    "add": lambda b: b.add("fresh", b"v"),
    "delete": lambda b: b.delete("k", "gone"),
    "keys": lambda b: b.keys(""),
    "update": lambda b: b.update("u", lambda old: b"x"),
    "observe": lambda b: b.observe("t", 5, 0.3),
    "observed": lambda b: b.observed("t"),
    "commit": lambda b: b.commit(Change(record=b"r", sets=(("w", b"1", None),)), Guard("log", None, "k", b"v")),
    "read": lambda b: b.read("log"),
    "peek": lambda b: b.peek("k", "log"),
    "trim": lambda b: b.trim("log", 2),
    "delete_log": lambda b: b.delete_log("other-log"),
    "publish": lambda b: b.publish("channel", b"m"),
    "listen": lambda b: b.listen("channel", lambda message: None)(),
    "has_listeners": lambda b: b.has_listeners(f"channel-{uuid.uuid4().hex}"),
    "lock": lambda b: b.lock("l", timeout=1).__enter__(),
    "ping": lambda b: b.ping(),
}
#: The calls that write, refused by a store that is up but cannot write.
WRITE_CALLS = ("set", "add", "update", "commit")


def assert_unavailable(backend: Backend, names: Sequence[str], *mentions: str, hidden: str = "\0") -> None:
    """Each call in ``names`` raises StoreUnavailable within 3.5 s, its message saying when to
    come back and naming ``mentions``, never ``hidden``."""
    for name in names:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as caught:
            STORE_CALLS[name](backend)
        assert time.monotonic() - started < 3.5, name
        message = caught.value.message
        assert "try again shortly" in message and hidden not in message, (name, message)
        assert all(mention in message for mention in mentions), (name, message)
        assert caught.value.status == 503 and caught.value.headers["Retry-After"]


@contextlib.contextmanager
def immutable(*paths: Path) -> Iterator[None]:
    """Make files or folders immutable (even to root) for the block."""
    if shutil.which("chattr") is None:
        pytest.fail("chattr is not installed (Debian: apt-get install e2fsprogs).")
    subprocess.run(["chattr", "+i", *map(str, paths)], check=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *map(str, paths)], check=True)


@pytest.mark.redis
def test_a_redis_that_is_down_is_unavailable_until_it_is_back(tmp_path):
    """Stopped: every call is refused fast, naming host and port, not the URL's password.
    Started again (empty, as it keeps nothing): the same backend serves it, without a restart."""
    password = "s3cret-of-the-url"
    with RedisServer(tmp_path / "redis") as server:
        admin = redis.Redis(port=server.port)
        admin.config_set("requirepass", password)
        backend = redis_backend(f"redis://:{password}@127.0.0.1:{server.port}/0", "p:")
        backend.set("k", b"v")
        assert append(backend, "log", b"a") == 1
        server.stop()
        assert_unavailable(backend, list(STORE_CALLS), f"127.0.0.1:{server.port}", "cannot be reached", hidden=password)
        server.start()
        redis.Redis(port=server.port).config_set("requirepass", password)
        assert backend.get("k") is None
        backend.set("k", b"again")
        assert backend.get("k") == b"again" and append(backend, "log", b"b") == 1
        with backend.lock("l", timeout=1):
            pass
        backend.close()


def refuse_writes(how: str, server: RedisServer, stack: contextlib.ExitStack) -> Callable[[], None]:
    """Make ``server`` refuse writes in one of three ways; the function that undoes it."""
    admin = redis.Redis(port=server.port)
    stack.callback(admin.close)
    if how == "out of memory":
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", 1)
        return lambda: admin.config_set("maxmemory", 0)
    if how == "read-only replica":
        primary = stack.enter_context(RedisServer(server.folder / "primary"))
        admin.replicaof("127.0.0.1", primary.port)
        return lambda: admin.replicaof("NO", "ONE")
    # A background save that failed (its folder cannot be written) stops writes: MISCONF.
    admin.config_set("save", "3600 1")
    stack.enter_context(immutable(server.folder))
    with contextlib.suppress(redis.ResponseError):
        admin.bgsave()
    deadline = time.monotonic() + 5
    while admin.info("persistence")["rdb_last_bgsave_status"] != "err" and time.monotonic() < deadline:
        time.sleep(0.05)
    return lambda: admin.config_set("save", "")


@pytest.mark.redis
@pytest.mark.parametrize("how", ["out of memory", "read-only replica", "failed save"])
def test_a_redis_that_refuses_writes_is_unavailable_for_them(tmp_path, how):
    """Writes are refused as StoreUnavailable; reads go on; once it takes writes again, so does
    the backend."""
    with RedisServer(tmp_path / "redis") as server, contextlib.ExitStack() as stack:
        backend = redis_backend(server.url, "p:")
        stack.callback(backend.close)
        backend.set("k", b"v")
        undo = refuse_writes(how, server, stack)
        assert_unavailable(backend, WRITE_CALLS, f"127.0.0.1:{server.port}", "refuses the request")
        backend.get("k")
        backend.read("log")
        undo()
        backend.set("k", b"w")
        assert backend.get("k") == b"w"
        assert append(backend, "log", b"r") >= 1


@pytest.fixture
def shelve_backend(tmp_path) -> Iterator[Backend]:
    store = shelve_at(tmp_path / "folder" / "store")
    yield store
    store.close()


def test_an_immutable_sqlite_file_is_unavailable_for_writes(shelve_backend, tmp_path):
    """The file and its write-ahead log made immutable under open connections: writes are
    refused, reads go on; writable again, the store keeps its data and numbering."""
    shelve_backend.set("k", b"v")
    assert append(shelve_backend, "log", b"a") == 1
    files = [tmp_path / "folder" / "store.sqlite3", tmp_path / "folder" / "store.sqlite3-wal"]
    with immutable(*files):
        assert_unavailable(shelve_backend, WRITE_CALLS, "shelve store (store.sqlite3)", hidden=str(tmp_path))
        assert shelve_backend.get("k") == b"v"
        assert shelve_backend.read("log") == [(1, b"a")]
    shelve_backend.set("k", b"w")
    assert shelve_backend.get("k") == b"w" and append(shelve_backend, "log", b"b") == 2


def test_a_removed_sqlite_folder_is_unavailable_until_it_is_back(shelve_backend, tmp_path):
    """Every call is refused while the folder is gone (nothing is written to the removed
    file); once the folder is made again, the store starts afresh, empty, in it."""
    shelve_backend.set("k", b"v")
    append(shelve_backend, "log", b"a")
    shutil.rmtree(tmp_path / "folder")
    assert_unavailable(shelve_backend, list(STORE_CALLS), "its folder is gone", hidden=str(tmp_path))
    assert not (tmp_path / "folder").exists()
    (tmp_path / "folder").mkdir()
    assert shelve_backend.get("k") is None
    assert append(shelve_backend, "log", b"b") == 1
    with shelve_backend.lock("l", timeout=1):
        pass
    # A second backend on the path (another process) sees the new store.
    other = shelve_at(tmp_path / "folder" / "store")
    assert other.read("log") == [(1, b"b")]
    other.close()


def test_a_replaced_sqlite_file_is_opened_again(shelve_backend, tmp_path):
    """A file put in the store's place (a restored copy: its write-ahead log and shared
    memory removed with the old file, as a restore must) is the one used next, not the
    removed one its connections had open."""
    path = tmp_path / "folder" / "store.sqlite3"
    shelve_backend.set("k", b"old")
    copy = shelve_at(tmp_path / "copy")
    copy.set("k", b"restored")
    copy.close()  # the last connection's close writes its log into the file
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink()
    os.replace(f"{tmp_path / 'copy'}.sqlite3", path)
    assert shelve_backend.get("k") == b"restored"
    shelve_backend.set("k", b"new")
    reader = shelve_at(tmp_path / "folder" / "store")
    assert reader.get("k") == b"new"
    reader.close()


def _checkpointers() -> int:
    return sum(thread.name == "river-ml-checkpoints" for thread in threading.enumerate())


def test_a_shelve_store_checkpoints_its_log_on_a_thread_of_its_own(shelve_backend, tmp_path):
    """Commits leave their log to a thread of the process, which copies it into the file soon
    after; a request checkpoints only past a log far larger. Closing the store ends the thread."""
    from flask_river_ml.storage.sqlite_checkpoints import EVERY_SECONDS, REQUEST_PAGES

    path = tmp_path / "folder" / "store.sqlite3"
    shelve_backend.set("k", b"v")
    assert shelve_backend._db().execute("PRAGMA wal_autocheckpoint").fetchone() == (REQUEST_PAGES,)
    assert _checkpointers() >= 1
    deadline = time.monotonic() + 20 * EVERY_SECONDS
    while True:
        # The file alone, without its log, holds the value once a checkpoint copied it there.
        shutil.copy(path, tmp_path / "alone.sqlite3")
        alone = sqlite3.connect(tmp_path / "alone.sqlite3")
        try:
            found = alone.execute("SELECT value FROM kv WHERE key = 'k'").fetchone()
        except sqlite3.OperationalError:  # not even the tables yet
            found = None
        alone.close()
        if found == (b"v",):
            break
        assert time.monotonic() < deadline, "the log was not checkpointed"
        time.sleep(EVERY_SECONDS / 2)
    before = _checkpointers()
    shelve_backend.close()
    assert _checkpointers() == before - 1


def test_the_checkpoint_thread_never_makes_a_removed_sqlite_file_again(shelve_backend, tmp_path):
    from flask_river_ml.storage.sqlite_checkpoints import EVERY_SECONDS

    path = tmp_path / "folder" / "store.sqlite3"
    shelve_backend.set("k", b"v")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink()
    time.sleep(4 * EVERY_SECONDS)
    assert not path.exists()
    # The next request starts the store afresh, as before.
    assert shelve_backend.get("k") is None and path.exists()


def test_a_sqlite_file_locked_too_long_is_unavailable_for_writes(shelve_backend, tmp_path, monkeypatch):
    """Another writer holds the file's lock longer than a write waits: writes are refused,
    saying so; reads go on (WAL); once it lets go, writes go through."""
    from flask_river_ml.storage import sqlite_files

    monkeypatch.setattr(sqlite_files, "_BUSY_SECONDS", 0.2)
    shelve_backend.close()
    backend = shelve_at(tmp_path / "folder" / "store")
    backend.set("k", b"v")
    holder = sqlite3.connect(tmp_path / "folder" / "store.sqlite3", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    assert_unavailable(backend, WRITE_CALLS, "locked by another writer")
    assert backend.get("k") == b"v"
    holder.execute("ROLLBACK")
    holder.close()
    backend.set("k", b"w")
    assert backend.get("k") == b"w"
    backend.close()


def test_a_damaged_sqlite_file_is_unavailable(tmp_path):
    """A file that is not an SQLite database (overwritten) is refused as unavailable, not
    with a driver error."""
    path = tmp_path / "folder" / "store"
    shelve_at(path).close()
    for suffix in ("-wal", "-shm"):
        Path(f"{path}.sqlite3{suffix}").unlink(missing_ok=True)
    Path(f"{path}.sqlite3").write_bytes(b"not a database at all" * 512)
    with pytest.raises(StoreUnavailable, match="file is not a database"):
        shelve_at(path)


def test_errors_of_callers_pass_unchanged(backend):
    """What the caller's function or the locked block raises is no store failure, whatever
    its type: it passes as it is."""
    with pytest.raises(FileNotFoundError):
        backend.update("u", lambda old: open("/nonexistent/file").read().encode())  # noqa: SIM115
    with pytest.raises(PermissionError), backend.lock("l"):
        raise PermissionError(13, "the block's own")
    with backend.lock("l", timeout=0.5):
        pass


def test_store_calls_defined_in_a_backend_base_are_guarded():
    """The built-in backends take capabilities from base classes of their own (a bus, a commit
    script, a file's connections): each store call they have translates store failures, where
    it is defined, unless it is a default of the interfaces made of other calls."""
    from flask_river_ml.storage.shelve import ShelveBackend

    for cls in (ShelveBackend, RedisClusterBackend):
        for name in STORE_CALLS:
            owner = next(base for base in cls.__mro__ if name in base.__dict__)
            assert owner in Backend.__mro__ or hasattr(owner.__dict__[name], "__wrapped__"), (cls, name)


@pytest.mark.redis
def test_listeners_survive_an_outage(tmp_path):
    """A listener of a redis stopped and started again, and one of an SQLite store whose folder
    was removed and made again, get the messages published after the store is back."""
    with RedisServer(tmp_path / "redis") as server:
        stores = [
            redis_backend(server.url, "p:"),
            shelve_at(tmp_path / "folder" / "store"),
        ]
        received: list[list[bytes]] = [[], []]
        stops = [store.listen("c", got.append) for store, got in zip(stores, received, strict=True)]
        server.stop()
        shutil.rmtree(tmp_path / "folder")
        time.sleep(1.5)
        server.start()
        (tmp_path / "folder").mkdir()
        for store, got in zip(stores, received, strict=True):
            deadline = time.monotonic() + 10
            while b"back" not in got and time.monotonic() < deadline:
                with contextlib.suppress(StoreUnavailable):
                    store.publish("c", b"back")
                time.sleep(0.2)
            assert b"back" in got, store.name
        for stop, store in zip(stops, stores, strict=True):
            stop()
            store.close()


@pytest.mark.redis
def test_redis_lock_outlives_a_failed_renewal(tmp_path, monkeypatch):
    """The store goes away while a lock is held: its renewals fail without crashing their
    thread (pytest fails a test whose thread raised), the block ends normally, the lock can be
    taken again."""
    from flask_river_ml.storage import redis as redis_module

    monkeypatch.setattr(redis_module, "_LOCK_EXPIRY", 0.3)
    with RedisServer(tmp_path / "redis") as server:
        backend = redis_backend(server.url, "p:")
        with backend.lock("m"):
            server.stop()
            time.sleep(0.5)
            server.start()
        with backend.lock("m", timeout=1):
            pass
        backend.close()
