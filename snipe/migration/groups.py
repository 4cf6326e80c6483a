"""A process's multicast standing, moved with it: the groups it joined, where each origin's
stream stands (and what is held early), and, as a sender, its origin and next sequence number
per group. The routers deliver by URN through the unicast channels, which move with the process,
so a member that migrates keeps receiving every group message once and in order, and a sender
that migrates goes on with its stream.

A process restored from a checkpoint is another incarnation as a sender: what its lost
incarnation sent after the checkpoint used the numbers that follow, so it keeps its own new
origin and numbers from the first again (`restore_groups(..., same_incarnation=False)`); as a
member, it takes up where the checkpoint stood."""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from snipe.catalog.client import CatalogClient, now_ms
from snipe.errors import SnipeError
from snipe.messaging.endpoint import Message
from snipe.multicast.core import FIRST_SEQ, Reorder, origin_urn

if TYPE_CHECKING:
    from snipe.multicast.groups import Membership

log = logging.getLogger("snipe.migration")


def export_groups(m: Membership | None) -> dict[str, Any]:
    if m is None:
        return {}
    with m.lock:
        # [group, origin, expected, held, start]: the start last, so a state without it (exported
        # before it was added) still restores
        reorder = [[g, origin, r.expected, [[seq, it.tag, bytes(it.payload)] for seq, it in sorted(r.held.items())],
                    r.start]
                   for (g, origin), r in m.reorder.items()]
        return {"joined": {g: list(rs) for g, rs in m.joined.items()}, "since": dict(m.since), "reorder": reorder,
                "seqs": {g: next(copy.copy(c)) for g, c in m.seqs.items()}, "origin": m.origin}


def restore_groups(m: Membership, state: dict[str, Any], *, same_incarnation: bool = True) -> None:
    """`same_incarnation`: a migration's clone, which goes on with the sender's stream (its origin
    and numbers); False for a restore from a checkpoint (see the module's doc)."""
    if not state:
        return
    with m.lock:
        m.joined.update({g: list(rs) for g, rs in state["joined"].items()})
        m.since.update(state["since"])
        for g, origin, expected, held, *rest in state["reorder"]:
            r = m.reorder[(g, origin)] = Reorder(first_seq=FIRST_SEQ)
            r.expected = expected
            # where the stream started; a state exported before it was kept has none: no lower
            # bound (a seq below `expected` is then a duplicate, never reported late)
            r.start = rest[0] if rest else None
            r.held = {seq: Message(origin_urn(origin), tag, payload, group=g) for seq, tag, payload in held}
        if same_incarnation:       # (a state from before origins had incarnations: its stream was the bare URN's)
            m.origin = str(state.get("origin") or m.me)
            for g, n in state["seqs"].items():
                m.seqs[g] = itertools.count(int(n))


def reregister(m: Membership, catalog: CatalogClient, host: str | None) -> None:
    """Say in each group's entry that this member now stands on `host` (same routers), as the
    lease this process renews from now on, and have the routers replay what they relayed while
    the lease may have lapsed (Membership.reassert): a checkpoint's restore comes long after the
    lost process stopped renewing, and a clone after its original's freeze."""
    with m.lock:
        joined = dict(m.joined)
    since = now_ms()
    m.reassert(catalog, {g: {"host": host or "", "routers": routers, "since": since} for g, routers in joined.items()})


def join_here(m: Membership, ask_daemon: Callable[[str, dict[str, Any]], Any]) -> None:
    """Tell this host's daemon (`ask_daemon(kind, body)`) that we are a member of each group we
    are in, after a move to this host: it counts us as its own (its bounds, its restart state)
    and stands for election where the rule says so, as it would have had we joined here. The
    routers we registered with stay ours; the old host's daemon forgets us once our lease names
    this host (daemon/mcast.py). A refusal (a bound here) is logged: the member still receives
    through its routers."""
    with m.lock:
        groups = sorted(m.joined)
    for group in groups:
        try:
            ask_daemon("mcast-join", {"group": group, "member": m.me})
        except SnipeError as exc:
            log.warning("%s: this host's daemon would not count it as a member of %s after its move: %s",
                        m.me, group, exc)
