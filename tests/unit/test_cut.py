"""The cut rule, exhaustively: a simulated Postgres with concurrent transactions (some
begin before the snapshot's cut and commit after it), a snapshot taken at a random
moment, and its rows delivered interleaved at random with the CDC stream — lagging,
leading or in between. The replica always ends equal to Postgres."""
from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mallard.core.cut import Cut, Origin, cdc_event_applies, snapshot_row_applies, survives_snapshot_end, widen

DELETED = object()


def simulate(rng: random.Random, steps: int, keys: int):
    """(final committed state, snapshot cut, snapshot rows, CDC events in commit order since
    the replication slot was created, keys that exist at some moment from the cut on)."""
    committed: dict[int, int] = {}
    open_txs: dict[int, list] = {}  # xid -> writes
    claimed: dict[int, int] = {}  # key -> xid holding its row lock
    next_xid = 1000
    cdc, snapshot = [], None
    snapshot_at = rng.randrange(steps)
    slot_at = rng.randrange(snapshot_at + 1)  # the slot exists before the cut (the snapshotter checks)
    alive_after_cut: set[int] = set()
    for step in range(steps):
        if step == slot_at:
            cdc.clear()  # what committed before the slot is not on Kafka
        if step == snapshot_at:
            xip = frozenset(open_txs)
            snapshot = (Cut(min(xip) if xip else next_xid, next_xid, xip), dict(committed))
            alive_after_cut |= set(committed)
        action = rng.random()
        if action < 0.3 or not open_txs:
            open_txs[next_xid] = []
            next_xid += 1
        elif action < 0.75:
            xid = rng.choice(list(open_txs))
            key = rng.randrange(keys)
            if claimed.get(key, xid) != xid:
                continue  # another open transaction holds the row: Postgres would block
            claimed[key] = xid
            open_txs[xid].append(("d", key, None) if rng.random() < 0.25 else ("u", key, rng.randrange(100)))
        else:
            xid = rng.choice(list(open_txs))
            for op, key, value in open_txs.pop(xid):
                if op == "d":
                    committed.pop(key, None)
                else:
                    committed[key] = value
                cdc.append((xid, op, key, value))
                if snapshot is not None:
                    alive_after_cut |= set(committed)
            claimed = {k: x for k, x in claimed.items() if x != xid}
    for xid in list(open_txs):  # everything commits in the end
        for op, key, value in open_txs.pop(xid):
            committed.pop(key, None) if op == "d" else committed.__setitem__(key, value)
            cdc.append((xid, op, key, value))
            alive_after_cut |= set(committed)
    cut, rows = snapshot
    return committed, cut, rows, cdc, alive_after_cut


def replicate(rng: random.Random, cut: Cut, rows: dict, cdc: list, initial_cdc: int, keys: int,
              alive_after_cut: set[int], snapshot_bias: float = 0.5) -> dict:
    """Start from a stale replica (an old snapshot S0), apply the first ``initial_cdc`` CDC
    events, then interleave the snapshot S and the rest. Once S is complete, no key that
    never existed from the cut on may appear (a lagging CDC stream must not resurrect it)."""
    state: dict[int, tuple[object, Origin]] = {
        k: (rng.randrange(100), Origin(snapshot_id="S0")) for k in range(keys) if rng.random() < 0.5}
    cuts, completed = {"S": cut, "S0": Cut(1, 1)}, []

    def apply_cdc(xid, op, key, value):
        if cdc_event_applies(state.get(key, (None, None))[1], xid, cuts, completed):
            state[key] = (DELETED if op == "d" else value, Origin(cdc_tx_id=xid))

    for event in cdc[:initial_cdc]:
        apply_cdc(*event)
    snapshot_items = list(rows.items())
    rng.shuffle(snapshot_items)
    stream = [("row", item) for item in snapshot_items] + [("end", None)]
    events = cdc[initial_cdc:]
    i = j = 0
    while i < len(stream) or j < len(events):
        if j >= len(events) or (i < len(stream) and rng.random() < snapshot_bias):
            kind, item = stream[i]
            i += 1
            if kind == "row":
                key, value = item
                if snapshot_row_applies(state.get(key, (None, None))[1], cut):
                    state[key] = (value, Origin(snapshot_id="S"))
            else:
                for key, (value, origin) in list(state.items()):
                    if not survives_snapshot_end(origin, "S", cut):
                        state[key] = (DELETED, Origin(snapshot_id="S"))
                completed.append(cut)
        else:
            apply_cdc(*events[j])
            j += 1
        if completed:
            present = {k for k, (v, _) in state.items() if v is not DELETED}
            assert present <= alive_after_cut, f"resurrected: {present - alive_after_cut}"
    return {k: v for k, (v, _) in state.items() if v is not DELETED}


@settings(max_examples=400, deadline=None)
@given(seed=st.integers(0, 2**32), steps=st.integers(1, 60), keys=st.integers(1, 8), head=st.floats(0, 1),
       snapshot_bias=st.sampled_from([0.0, 0.5, 1.0]))
def test_snapshot_plus_cdc_equals_postgres_whatever_the_order(seed, steps, keys, head, snapshot_bias):
    """snapshot_bias 1.0: CDC lags behind the whole snapshot; 0.0: CDC is ahead of it."""
    rng = random.Random(seed)
    final, cut, rows, cdc, alive = simulate(rng, steps, keys)
    # The replica may already hold some CDC from before the snapshot (any prefix of the stream).
    assert replicate(rng, cut, rows, cdc, int(head * len(cdc)), keys, alive, snapshot_bias) == final


def test_a_lagging_cdc_stream_does_not_resurrect_a_key_deleted_before_the_cut():
    cut = Cut(20, 20)  # transactions 10 (insert k) and 11 (delete k) committed before it
    cdc = [(10, "u", 7, 1), (11, "d", 7, None)]
    final = replicate(random.Random(0), cut, {}, cdc, 0, 0, alive_after_cut=set(), snapshot_bias=1.0)
    assert final == {}


def test_the_long_transaction_case():
    """T1 writes first (smaller LSN) but commits after the cut; T2 commits before it."""
    cut = Cut(xmin=10, xmax=12, xip=frozenset({10}))
    assert not cut.covers(10)  # T1: in progress at the cut -> not in the snapshot
    assert cut.covers(11)  # T2: committed before the cut -> in the snapshot
    assert cut.covers(9) and not cut.covers(12)


@pytest.mark.parametrize("text, cut", [
    ("10:12:10", Cut(10, 12, frozenset({10}))),
    ("750:750:", Cut(750, 750)),
    ("5:9:5,7", Cut(5, 9, frozenset({5, 7}))),
])
def test_parse_pg_snapshot(text, cut):
    assert Cut.parse(text) == cut


@pytest.mark.parametrize("text", ["", "1:2", "5:3:", "1:5:7", "a:b:"])
def test_bad_pg_snapshot_text_is_refused(text):
    with pytest.raises(ValueError):
        Cut.parse(text)


def test_debezium_32_bit_txids_are_widened_with_the_snapshot_epoch():
    epoch = 3 << 32
    cut = Cut(epoch + 100, epoch + 200, frozenset({epoch + 150}))
    assert cut.covers(99) and cut.covers(160) and not cut.covers(150) and not cut.covers(250)
    # Around a wraparound: a 32-bit xid just below 2^32 belongs to the previous epoch.
    assert widen(0xFFFFFFF0, epoch + 5) == epoch - 16
    assert widen(3, (2 << 32) + 0xFFFFFFF0) == epoch + 3
    assert Cut(epoch + 5, epoch + 10).covers(0xFFFFFFF0)
