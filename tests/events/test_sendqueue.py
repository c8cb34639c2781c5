"""The per-connection send queue: order, coalescing, never dropping final events, bounds."""

from __future__ import annotations

import pytest

from callannotate.events.sendqueue import Outgoing, SendQueue


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def progress(job: str, seq: int) -> Outgoing:
    return Outgoing(f"{job}:{seq}:progress", job, seq, coalescible=True)


def event(job: str, seq: int, kind: str = "completed") -> Outgoing:
    return Outgoing(f"{job}:{seq}:{kind}", job, seq)


def drain(queue: SendQueue) -> list[str]:
    out: list[str] = []
    while (item := queue.pop()) is not None:
        out.append(item.text)
    return out


def seqs_increase_per_job(texts: list[str]) -> bool:
    last: dict[str, int] = {}
    for text in texts:
        job, seq, _ = text.split(":")
        if int(seq) <= last.get(job, 0):
            return False
        last[job] = int(seq)
    return True


def test_below_capacity_everything_is_kept_in_order() -> None:
    queue = SendQueue(8, full_timeout_s=10)
    items = [progress("a", 1), progress("a", 2), event("b", 1, "partial"), progress("a", 3)]
    for item in items:
        assert queue.offer(item)
    assert drain(queue) == [item.text for item in items]
    assert queue.coalesced == 0


def test_when_full_progress_of_the_same_job_is_replaced_by_the_latest() -> None:
    queue = SendQueue(3, full_timeout_s=10)
    for seq in range(1, 4):
        assert queue.offer(progress("a", seq))
    for seq in range(4, 10):
        assert queue.offer(progress("a", seq))
    texts = drain(queue)
    assert texts == ["a:1:progress", "a:2:progress", "a:9:progress"]
    assert queue.coalesced == 6


def test_completed_and_failed_are_never_dropped() -> None:
    queue = SendQueue(2, full_timeout_s=10)
    assert queue.offer(event("x", 1, "partial"))
    assert queue.offer(event("y", 1, "partial"))
    assert queue.offer(event("a", 1, "completed"))  # full: goes to the overflow
    assert queue.offer(event("b", 1, "failed"))
    assert drain(queue) == ["x:1:partial", "y:1:partial", "a:1:completed", "b:1:failed"]


def test_a_final_event_makes_queued_progress_of_its_job_obsolete() -> None:
    queue = SendQueue(2, full_timeout_s=10)
    queue.offer(progress("a", 1))
    queue.offer(event("b", 1, "partial"))
    assert queue.offer(event("a", 2, "completed"))
    assert drain(queue) == ["b:1:partial", "a:2:completed"]


def test_progress_waits_parked_when_nothing_can_be_replaced() -> None:
    queue = SendQueue(2, full_timeout_s=10)
    queue.offer(event("x", 1, "partial"))
    queue.offer(event("y", 1, "partial"))
    for seq in range(1, 6):
        assert queue.offer(progress("a", seq))  # latest parked progress wins
    assert len(queue) == 3
    assert drain(queue) == ["x:1:partial", "y:1:partial", "a:5:progress"]


def test_parked_progress_is_sent_after_older_overflow_events_of_its_job() -> None:
    queue = SendQueue(2, full_timeout_s=10)
    queue.offer(event("x", 1, "partial"))
    queue.offer(event("y", 1, "partial"))
    queue.offer(event("a", 1, "started"))  # overflow
    queue.offer(progress("a", 2))  # parked: must come after a:1
    queue.offer(event("z", 1, "partial"))  # overflow
    texts = drain(queue)
    assert seqs_increase_per_job(texts)
    assert texts[-1] == "a:2:progress"
    assert set(texts) == {
        "x:1:partial",
        "y:1:partial",
        "a:1:started",
        "a:2:progress",
        "z:1:partial",
    }


def test_overflow_beyond_its_bound_asks_to_disconnect() -> None:
    queue = SendQueue(3, full_timeout_s=1e9)
    for i in range(6):  # 3 queued + 3 overflow
        assert queue.offer(event(f"j{i}", 1, "partial"))
    assert not queue.offer(event("j6", 1, "completed"))
    assert len(queue) == 6  # bounded: nothing was added


def test_staying_full_too_long_asks_to_disconnect() -> None:
    clock = Clock()
    queue = SendQueue(2, full_timeout_s=5.0, clock=clock)
    queue.offer(progress("a", 1))
    queue.offer(progress("b", 1))
    clock.now = 4.0
    assert queue.offer(progress("a", 2))  # full, but not for long yet
    clock.now = 5.5
    assert not queue.offer(progress("a", 3))


def test_leaving_full_state_resets_the_timer() -> None:
    clock = Clock()
    queue = SendQueue(2, full_timeout_s=5.0, clock=clock)
    queue.offer(progress("a", 1))
    queue.offer(progress("b", 1))
    clock.now = 4.0
    assert queue.pop() is not None  # the client read one
    clock.now = 6.0
    queue.offer(progress("c", 1))  # full again from t=6
    clock.now = 10.0
    assert queue.offer(progress("c", 2))


@pytest.mark.parametrize("capacity", [2, 8, 64])
def test_memory_stays_bounded_under_a_flood(capacity: int) -> None:
    """Whatever arrives, at most 2 x capacity items plus one parked progress per job."""
    queue = SendQueue(capacity, full_timeout_s=1e9)
    jobs = [f"job{i}" for i in range(5)]
    accepted = 0
    for seq in range(1, 2000):
        job = jobs[seq % len(jobs)]
        ok = queue.offer(progress(job, seq))
        accepted += ok
        assert len(queue) <= 2 * capacity + len(jobs)
    texts = drain(queue)
    assert seqs_increase_per_job(texts)
    assert {t.split(":")[0] for t in texts} == set(jobs)  # every job's latest is there
    assert queue.coalesced > 0


def test_clear_drops_everything() -> None:
    queue = SendQueue(2, full_timeout_s=10)
    for i in range(4):
        queue.offer(event(f"j{i}", 1, "partial"))
    queue.offer(progress("p", 1))
    queue.clear()
    assert len(queue) == 0 and queue.pop() is None


def test_truth_is_whether_anything_is_queued_parked_or_in_overflow() -> None:
    queue = SendQueue(1, full_timeout_s=10)
    assert not queue
    queue.offer(progress("a", 1))
    assert queue and len(queue) == 1
    queue.offer(progress("b", 2))  # parked
    queue.offer(event("c", 3))  # overflow
    assert queue.pop() is not None and len(queue) == 2 and queue
    queue.clear()
    assert not queue and len(queue) == 0
