"""The inbox's bookkeeping without Ray (`InboxQueue` is the plain class the `Inbox` actor
wraps): leases of serving drivers lapse when their heartbeats stop, and what a lapsed
driver was running is not lost."""

from pipeline.inbox import InboxQueue


class Clock:
    """A clock the test moves by hand (seconds)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_driver_that_stops_beating_stops_being_counted():
    clock = Clock()
    inbox = InboxQueue(lease_s=30.0, clock=clock)
    alive, killed = inbox.attach(), inbox.attach()
    assert inbox.serving() == 2
    for _ in range(10):  # `alive` beats every 5 s; `killed` was SIGKILLed and never detaches
        clock.now += 5.0
        assert inbox.heartbeat(alive)
    assert inbox.serving() == 1
    assert inbox.serves(alive) and not inbox.serves(killed)
    inbox.detach(alive)
    assert inbox.serving() == 0


def test_a_lapsed_drivers_running_submission_goes_back_to_the_front():
    clock = Clock()
    inbox = InboxQueue(lease_s=30.0, clock=clock)
    first, second = inbox.put({"name": "walk"}), inbox.put({"name": "run"})
    killed = inbox.attach()
    assert inbox.take(killed).id == first
    assert inbox.get(first).status == "running"
    clock.now += 31.0
    # The next command sees no server and the submission pending again, first in line.
    assert inbox.serving() == 0
    assert inbox.get(first).status == "pending" and inbox.pending() == 2
    fresh = inbox.attach()
    assert inbox.take(fresh).id == first
    assert inbox.take(fresh).id == second


def test_taking_renews_the_lease_and_a_late_beat_says_it_had_lapsed():
    clock = Clock()
    inbox = InboxQueue(lease_s=30.0, clock=clock)
    token = inbox.attach()
    for _ in range(5):  # an idle driver polling every 20 s keeps its lease by asking
        clock.now += 20.0
        assert inbox.take(token) is None
    assert inbox.serves(token)
    submission = inbox.put({"name": "walk"})
    assert inbox.take(token).id == submission
    clock.now += 40.0  # stalled longer than the lease (a suspended machine)
    assert inbox.heartbeat(token) is False
    assert inbox.serves(token) and inbox.get(submission).status == "pending"
    # It finished the task after all: done, and not run a second time.
    inbox.finish(submission, True, "fitted walk")
    assert inbox.get(submission).status == "done" and inbox.pending() == 0


def test_a_submission_taken_again_after_its_driver_stopped_is_marked_a_retry():
    clock = Clock()
    inbox = InboxQueue(lease_s=30.0, clock=clock)
    walk, run, hop = inbox.put({"name": "walk"}), inbox.put({"name": "run"}), inbox.put({})
    assert inbox.get(walk).attempts == 0 and not inbox.get(walk).retried
    first = inbox.take(inbox.attach())
    assert first.id == walk and first.attempts == 1 and not first.retried
    assert inbox.take(inbox.attach()).id == run
    clock.now += 31.0  # both drivers SIGKILLed mid-run: no beats, their leases lapse
    fresh = inbox.attach()
    # Back in the order they were taken, ahead of the one never taken.
    again = inbox.take(fresh)
    assert again.id == walk and again.attempts == 2 and again.retried
    inbox.finish(walk, True, "fitted s2w; kept walk")
    assert inbox.take(fresh).id == run and inbox.get(run).retried
    inbox.finish(run, True, "fitted run")
    # A driver interrupted (Ctrl-C) puts its submission back: the next take is a retry too.
    assert not inbox.take(fresh).retried
    inbox.requeue(hop)
    assert inbox.get(hop).status == "pending"
    assert inbox.take(fresh).retried
    assert inbox.take(fresh) is None
