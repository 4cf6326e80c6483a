"""GroupRouter._on_data looks up what depends only on a run's source, origin and group when they
change, not per message: the checks it keeps per message must still hold message by message."""

from __future__ import annotations

import math
from types import SimpleNamespace

from daemon.mcast import GroupRouter, _View
from snipe.messaging.channel import Deliver
from snipe.multicast.core import MCAST_DATA, MCAST_DELIVER, Header, origin_of, pack, unpack_batch
from tests.unit.test_multicast_pending_answers import _Endpoint

G = "urn:snipe:group:g"
H = "urn:snipe:group:h"
S = "urn:snipe:proc:sender"
EVE = "urn:snipe:proc:eve"
M = "urn:snipe:proc:member"
ME = "urn:snipe:host:r0"
PEER = "urn:snipe:host:r1"


def _router() -> tuple[GroupRouter, _Endpoint]:
    ep = _Endpoint()
    router = GroupRouter(ME, "tcp://r0", SimpleNamespace(), ep, 5.0)  # type: ignore[arg-type]
    for g in (G, H):
        router.views[g] = _View(math.inf, None, (M,), (ME, PEER))     # never refreshed: no catalog here
    return router, ep


def _data(source: str, origin: str, seq: int, group: str = G) -> Deliver:
    return Deliver(source, MCAST_DATA, pack(Header(group, origin, seq, 0, (ME, PEER)), b"%d" % seq), 0)


def _delivered(router: GroupRouter, ep: _Endpoint) -> list[tuple[str, str, int, bytes]]:
    for hook in ep.turn_end:
        hook()
    return [(group, origin, first + i, body) for to, tag, payload in ep.sent if tag == MCAST_DELIVER
            for group, runs in [unpack_batch(payload)] for origin, first, _, bodies in runs
            for i, body in enumerate(bodies)]


def test_a_forged_origin_is_refused_in_the_middle_of_a_run_and_either_side_of_it_passes():
    router, ep = _router()
    mine, theirs = origin_of(S, 1), origin_of(EVE, 1)
    router._on_data([_data(S, mine, 1), _data(EVE, mine, 2), _data(S, mine, 2), _data(EVE, theirs, 1),
                     _data(S, theirs, 2)])
    assert router.forged == 2                        # eve claiming the sender's, the sender claiming eve's
    assert _delivered(router, ep) == [(G, mine, 1, b"1"), (G, mine, 2, b"2"), (G, theirs, 1, b"1")]


def test_a_run_that_switches_groups_relays_each_message_in_its_own_group():
    router, ep = _router()
    o = origin_of(S, 1)
    router._on_data([_data(S, o, 1, G), _data(S, o, 1, H), _data(S, o, 2, G), _data(S, o, 2, H), _data(S, o, 2, H)])
    assert sorted(_delivered(router, ep)) == [(G, o, 1, b"1"), (G, o, 2, b"2"), (H, o, 1, b"1"), (H, o, 2, b"2")]
    assert router.relays[H].duplicates == 1 and router.histories[G].mark == router.histories[H].mark == 2
