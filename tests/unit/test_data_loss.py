"""Data loss under the applier (mallard/core/data_loss.py), and what the assembler does
with a partition that lost messages."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mallard.core.changes import TransactionMarker
from mallard.core.data_loss import BELOW_START, BEYOND_END, RECREATED, Known, Observed, detect
from tests.unit.test_transactions_hostile import PARTS, TX, Clock, assembler, event

TP = ("mallard.public.t", 0)


def kinds(known: Known | None, observed: Observed) -> list[str]:
    return [loss.kind for loss in detect({TP: known} if known else {}, {TP: observed})]


def test_nothing_known_is_never_a_loss():
    assert kinds(None, Observed(0, 0)) == []
    assert kinds(None, Observed(500, 900)) == []  # retention moved the start: a first reader starts there
    assert kinds(Known(), Observed(3, 3, topic_id="b")) == []


def test_a_healthy_partition_is_no_loss():
    assert kinds(Known(10, "a"), Observed(0, 10, committed=10, topic_id="a")) == []
    assert kinds(Known(10, "a"), Observed(0, 50, committed=7, topic_id="a")) == []
    assert kinds(Known(10, "a"), Observed(10, 10, committed=10, topic_id="a")) == []  # all read, then retention
    assert kinds(Known(None, "a"), Observed(0, 5, committed=None, topic_id="a")) == []
    assert kinds(Known(12, "a"), Observed(10, 40, committed=8, topic_id="a")) == []  # read past the start: held


def test_a_recreated_topic_is_a_loss_whatever_its_offsets():
    [loss] = detect({TP: Known(50, "a")}, {TP: Observed(0, 70, committed=None, topic_id="b")})
    assert loss.kind == RECREATED and loss.restart_at == 0 and "recreated" in loss.detail
    assert kinds(Known(None, "a"), Observed(0, 0, topic_id="b")) == [RECREATED]
    assert kinds(Known(3, None), Observed(0, 5, topic_id="b")) == []  # no id known before: offsets decide


def test_an_offset_beyond_the_end_is_a_loss():
    [loss] = detect({TP: Known(50, "a")}, {TP: Observed(0, 3, committed=50, topic_id="a")})
    assert loss.kind == BEYOND_END and loss.restart_at == 0 and "50" in loss.detail and " 3" in loss.detail
    assert kinds(Known(None, None), Observed(0, 3, committed=4)) == [BEYOND_END]  # the group's, after a restart
    assert kinds(Known(9, None), Observed(2, 8, committed=5)) == [BEYOND_END]  # read to 9, the end is now 8
    [loss] = detect({TP: Known(9, None)}, {TP: Observed(2, 8, committed=5)})
    assert loss.restart_at == 2


def test_everything_before_the_start_is_a_loss():
    [loss] = detect({TP: Known(5, "a")}, {TP: Observed(10, 40, committed=5, topic_id="a")})
    assert loss.kind == BELOW_START and "5 to 9" in loss.detail and loss.restart_at == 10
    assert kinds(None, Observed(10, 40, committed=3)) == [BELOW_START]


def test_unanswered_or_unknown_partitions_are_no_evidence():
    assert detect({TP: Known(50, "a")}, {}) == []
    assert kinds(Known(50, "a"), Observed(-1, -1, topic_id="a")) == []


@settings(max_examples=500, deadline=None)
@given(produced=st.integers(0, 50), read=st.integers(0, 50), committed=st.integers(0, 50), start=st.integers(0, 50),
       more=st.integers(0, 20), commit_known=st.booleans())
def test_without_loss_nothing_is_reported(produced, read, committed, start, more, commit_known):
    """What the applier knew is captured before Kafka is asked: whatever it read and committed
    of an intact partition (and whatever was produced or removed by retention after it read it)
    is never taken for a loss."""
    read = min(read, produced)
    committed = min(committed, read)
    start = min(start, read)  # retention removed only what it had read
    high = produced + more
    assert detect({TP: Known(read, "a")},
                  {TP: Observed(start, high, committed if commit_known else None, "a")}) == []


@settings(max_examples=500, deadline=None)
@given(read=st.integers(1, 50), left=st.integers(0, 49), new=st.integers(0, 60), recreated=st.booleans())
def test_a_loss_of_what_was_read_is_always_reported(read, left, new, recreated):
    """A partition truncated to ``left`` messages (< what the applier read), or recreated with
    ``new`` messages: always a loss, and the partition is read again from its start."""
    if recreated:
        losses = detect({TP: Known(read, "a")}, {TP: Observed(0, new, None, "b")})
        assert [loss.kind for loss in losses] == [RECREATED]
    else:
        left = min(left, read - 1)
        losses = detect({TP: Known(read, "a")}, {TP: Observed(0, left, read, "a")})
        assert [loss.kind for loss in losses] == [BEYOND_END]
    assert losses[0].restart_at == 0


# -- the assembler ------------------------------------------------------------------------


def test_a_lost_partition_is_read_again_from_its_start_and_never_commits_its_old_offsets():
    clock, source = Clock(), [5000]
    a = assembler(clock, source)
    for off in range(3):
        a.add_event(event(10 + off, 1, PARTS[0], 40 + off), 10 + off, 1, PARTS[0], 40 + off)
        a.add_marker(TransactionMarker(*TX, off, "END", 10 + off, 1000 + off, 1, 0))
    a.mark_applied(a.take_ready(10))
    assert a.committable() == {TX: 3, PARTS[0]: 43}
    a.partition_lost(PARTS[0], 0, "lost")
    assert a.committable() == {TX: 3, PARTS[0]: 0}
    assert a.drain_refused() == [] and a.transactions_expired == 0  # nothing was incomplete
    # The recreated topic's messages: new offsets from 0, committed as they are applied.
    a.add_event(event(20, 1, PARTS[0], 0), 20, 1, PARTS[0], 0)
    a.add_marker(TransactionMarker(*TX, 3, "END", 20, 2000, 1, 0))
    assert a.committable() == {TX: 3, PARTS[0]: 0}
    a.mark_applied(a.take_ready(10))
    assert a.committable() == {TX: 4, PARTS[0]: 1}


def test_transactions_that_may_have_lost_events_are_expired_at_once_and_later_ones_flow():
    clock, source = Clock(), [5000]
    a = assembler(clock, source)
    a.add_marker(TransactionMarker(*TX, 0, "END", 66, 4000, 2, 0))  # its events were on the lost partition
    a.add_event(event(66, 1, PARTS[1], 5), 66, 1, PARTS[1], 5)
    a.add_event(event(77, 1, PARTS[1], 6), 77, 1, PARTS[1], 6)  # its END was on a lost transaction topic
    a.add_marker(TransactionMarker(*TX, 1, "END", 88, 4100, 1, 0))  # held behind 66
    a.add_event(event(88, 1, PARTS[0], 9), 88, 1, PARTS[0], 9)
    assert a.take_ready(10) == []
    a.partition_lost(PARTS[0], 0, "topic recreated")
    refused = a.drain_refused()
    assert {r.stream for r in refused if r.event is not None} == {"public.t"}
    assert {r.event.tx_id for r in refused if r.event is not None} == {66, 77}
    assert any(r.event is None and r.offset == 0 for r in refused)  # 66's END
    assert a.transactions_expired == 2 and a.stuck is None
    [tx] = a.take_ready(10)
    assert tx.tx_id == 88
    a.mark_applied([tx])
    assert a.committable() == {TX: 2, PARTS[0]: 0, PARTS[1]: 7}
    # A late END of an expired transaction is refused, not waited for.
    a.add_marker(TransactionMarker(*TX, 2, "END", 77, 4050, 1, 0))
    assert a.waiting_transactions == 0 and a.drain_refused()


# -- the applier's watch (services/applier/data_loss.py), without Kafka ----------------------


def test_the_watch_asks_with_what_was_known_before_and_remembers_topic_ids():
    from concurrent.futures import wait
    from datetime import datetime, timedelta, timezone
    from types import SimpleNamespace

    from mallard.services.applier.data_loss import DataLossWatch

    answers = [{TP: Observed(0, 10, 10, "a"), ("mallard.public.t", 1): Observed(0, 0, None, "a")},
               {TP: Observed(0, 2, None, "b"), ("mallard.public.t", 1): Observed(0, 0, None, "b")}]
    watch = DataLossWatch(prefix="mallard", interval_s=5.0)

    watch._observe = lambda topics: answers.pop(0)  # Kafka's answer

    def ask(now, known):
        watch.ask(now, {TP[0]}, known)
        wait([watch._pending[0]])
        return watch.answer()

    known, observed = ask(0.0, {TP: 10})
    assert detect(known, observed) == [] and watch.topic_ids == {TP[0]: "a"}
    watch.ask(1.0, {TP[0]}, {TP: 10})
    assert watch._pending is None  # not due yet
    known, observed = ask(5.0, {TP: 10})
    losses = detect(known, observed)
    assert [(x.partition, x.kind) for x in losses] == [(0, RECREATED), (1, RECREATED)]  # unread partitions too
    for loss in losses:
        watch.record(loss, "requested")
    assert watch.unrepaired() == ["public.t"] and watch.by_kind[RECREATED] == 2
    detected = datetime.fromisoformat(watch.streams["public.t"]["detected_at"])
    watch.snapshot_merged(SimpleNamespace(stream="public.t", snapshot_id="old", started_at=detected - timedelta(1)))
    assert watch.unrepaired() == ["public.t"]  # its cut is older than the loss
    watch.snapshot_merged(SimpleNamespace(stream="public.t", snapshot_id="s2",
                                          started_at=datetime.now(timezone.utc)))
    assert watch.unrepaired() == [] and watch.report()["streams"]["public.t"]["snapshot_id"] == "s2"
    watch.close()
    assert {m.name for m in watch.metric_families()} == {"mallard_kafka_data_loss",
                                                         "mallard_streams_unrepaired_after_data_loss"}


def test_a_loss_on_a_sanitized_topic_names_the_streams_of_that_topic():
    """Debezium writes public."Order Items" to mallard.public.Order_Items: the stream to
    re-snapshot is the one whose topic it is (or whose events came on it), not a guess
    from the topic's name; a topic two tables share names both."""
    from mallard.core.data_loss import Loss
    from mallard.services.applier.data_loss import DataLossWatch

    watch = DataLossWatch(prefix="mallard")
    watch.expect_streams(['public."Order Items"', "public.orders", r"public\..*"])  # a regex names no topic
    entry = watch.record(Loss("mallard.public.Order_Items", 0, RECREATED, "recreated", 0), "requested")
    assert entry["streams"] == ['public."Order Items"'] and entry["stream"] == 'public."Order Items"'
    watch.topic_streams["mallard.public.Order_Items"].add('public."Order_Items"')  # seen by the router
    entry = watch.record(Loss("mallard.public.Order_Items", 1, RECREATED, "recreated", 0), "requested")
    assert entry["streams"] == ['public."Order Items"', 'public."Order_Items"']
    assert set(watch.unrepaired()) == {'public."Order Items"', 'public."Order_Items"'}
    assert watch.record(Loss("mallard.shop.t", 0, RECREATED, "recreated", 0), None)["streams"] == ["shop.t"]
