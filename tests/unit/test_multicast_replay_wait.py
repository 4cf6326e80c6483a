"""A member's wait for its routers' replays (core.ReplayWait), as a transcript of the loss it stops.

Seen in the failover acceptance test (tests/integration/test_multicast.py): a member moved to a
router at the moment the stream started. That router already listed it (the catalog said so
before the member's Resume came), so it sent the member live messages of each sender ahead of
the replay of the earlier ones. The member's fixed 0.5 s hold had run out before anything
arrived (a slow member reading a long replay), so each sender's stream started at the first
live message and the replay of the ones before it was dropped as duplicates: thousands lost,
and nobody told.
"""

from __future__ import annotations

from snipe.multicast.core import (
    Header,
    History,
    Relay,
    Reorder,
    ReplayWait,
    Resume,
    batches,
    pack_replayed,
    unpack_batch,
    unpack_replayed,
)

G = "urn:snipe:group:g"
S = "urn:snipe:proc:sender"
R = "urn:snipe:host:h2"
M = "urn:snipe:proc:member"


def _router_world(n_before: int, n_live: int) -> tuple[list[tuple[int, list[bytes]]], list[tuple[int, list[bytes]]]]:
    """Router h2 relays a sender's seqs 1..n_before while the member is not among its members
    (its join came before, so its Resume asks for them), then n_live more once its view lists
    the member, and only then handles the member's Resume. Returns (what reached the member
    live, the replay), each as runs of (first seq, bodies)."""
    relay, history = Relay(R), History()
    live: list[tuple[int, list[bytes]]] = []
    for seq in range(1, n_before + n_live + 1):
        members = (M,) if seq > n_before else ()
        out = relay.on_data(Header(G, S, seq, 0, (R,)), members, (R,))
        assert out is not None
        body = b"%d" % seq
        history.add(S, seq, float(seq), (S, seq, 0, body), len(body))
        if out.deliver_to:
            live.append((seq, [body]))
    resume = Resume(G, since_ms=0, next={})                         # nothing started yet: all since the join
    replay = [(first, bodies) for payload in batches(G, history.replay(resume.next, resume.since_ms))
              for _, first, _, bodies in unpack_batch(payload)[1]]
    return live, replay


def test_a_fixed_hold_that_runs_out_before_the_replay_arrives_loses_the_start_of_the_stream():
    live, replay = _router_world(5, 2)
    r = Reorder(hold_until=0.5)                  # the old rule: asked at 0.0, new origins wait 0.5 s
    got = []
    for first, bodies in live:                   # a slow member: the first batch comes at 0.65 s
        got += r.on_run(first, bodies, 0.65)
    for first, bodies in replay:
        got += r.on_run(first, bodies, 0.7)
    assert got == [b"6", b"7"]                   # 1..5 lost: they came after the start
    assert r.on_timer(20.0) == ([], None)        # no hole: that rule reported nothing; now the
    assert r.take_late() == [(1, 5)]             # Reorder at least reports them (never silent)


def test_new_origins_wait_for_every_asked_router_to_answer_then_start_at_the_lowest_seq():
    live, replay = _router_world(5, 2)
    wait = ReplayWait(cap=5.0)
    r = Reorder(hold_until=wait.asked([R, "urn:snipe:host:h1"], 0.0))
    got = []
    for first, bodies in live:
        got += r.on_run(first, bodies, 0.65)     # later than the old hold: still held
    for first, bodies in replay:
        got += r.on_run(first, bodies, 0.7)
    assert got == [] and r.expected is None
    assert not wait.answered(R, 0.7)             # h1 has not answered yet
    assert r.on_timer(0.8) == ([], None)
    assert wait.answered("urn:snipe:host:h1", 0.9) and wait.hold_until == 0.9
    r.hold_until = wait.hold_until
    items, lost = r.on_timer(0.9)
    assert items == [b"%d" % i for i in range(1, 8)] and lost is None and r.expected == 8


def test_a_router_that_never_answers_holds_new_origins_for_the_cap_only():
    wait = ReplayWait(cap=5.0)
    r = Reorder(hold_until=wait.asked(["urn:snipe:host:dead"], 10.0))
    assert r.on_run(3, ["m3"], 11.0) == []
    assert r.on_timer(14.9) == ([], None)
    assert r.on_timer(15.0) == (["m3"], None)
    # the next wait does not wait for the dead one's old debt
    assert wait.asked([R], 20.0) == 25.0 and wait.answered(R, 20.5) and wait.hold_until == 20.5


def test_a_router_asked_twice_must_answer_twice():
    wait = ReplayWait(cap=5.0)
    wait.asked([R], 0.0)
    wait.asked([R], 0.3)                         # join, then a move at once: two replays under way
    assert not wait.answered(R, 0.4) and wait.hold_until == 5.4      # an answer is progress: cap from it
    assert wait.answered(R, 0.6) and wait.hold_until == 0.6
    assert not wait.answered(R, 0.7)             # an answer nobody awaits changes nothing
    assert wait.hold_until == 0.6


def test_the_answer_round_trips():
    assert unpack_replayed(pack_replayed(G)) == G
