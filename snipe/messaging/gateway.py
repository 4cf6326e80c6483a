"""Messages through a gateway host (after OCEAN's path names): sealing, and the relay's core.

Two processes whose hosts share no network reach each other through a daemon on a host that
shares a network with both (a gateway; routes.py `gateway_routes`). The reliable channel stays
end to end: the sender's `Outbound` and the receiver's `Inbound` are the same as on a direct
link, and the gateway only forwards frames, so a gateway that crashes, restarts or is replaced
by another loses nothing (the sender retransmits what was not acknowledged; the receiver drops
what it already has).

Security is end to end, not hop by hop: each msg/1 message (data or ack) is sealed with a NaCl
box between the two processes' keys (Curve25519 from their Ed25519 identities, the keys
CurveZMQ already uses), so the gateway can neither read nor forge nor alter what it carries; a
replayed box is a duplicate the channel drops. The sealed text names the source and the
destination, so a box cannot be reflected back to its writer. Each hop is CurveZMQ as well,
which is what lets the gateway refuse keys the cluster did not admit.

Wire (msg/1): `relay {f: source URN, t: destination URN}` and one frame, the sealed
msgpack array [f, t, [the inner msg/1 message's frames]].

`RelayCore` is the gateway's protocol core (no I/O): who sent for which source (where acks go
back), where each destination is (looked up by the shell), a bounded queue per destination
while it is being looked up, and counters per (source, destination) pair.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import nacl.bindings
import nacl.exceptions
import nacl.public

from snipe.errors import CodecError, SignatureError, TooLarge, UrnError
from snipe.identity import Identity
from snipe.messaging.channel import PROTOCOL, VERSION
from snipe.urn import validate_urn
from snipe.wire import Envelope, encode

__all__ = ["RELAY", "Lookup", "RelayCore", "Sealer", "ToPeer", "ToSender", "parse_relay", "relay_parts"]

RELAY = "relay"
MAX_SEALED_BYTES = 512 * 1024 * 1024       # a relayed message (after the channel's own batching) stays under this


def relay_parts(source: str, dest: str, sealed: bytes) -> list[bytes]:
    """The frames of a relayed message: the relay envelope, then the sealed message."""
    return encode(Envelope(PROTOCOL, VERSION, RELAY, 0, {"f": source, "t": dest}), [sealed])


def parse_relay(env: Envelope, frames: Sequence[Any]) -> tuple[str, str, bytes]:
    """(source, destination, sealed) of a relay envelope; CodecError if it is not a well-formed one."""
    if env.kind != RELAY:
        raise CodecError(f"expected a msg/1 relay message, not {env.kind!r}")
    source, dest = env.body.get("f"), env.body.get("t")
    if not isinstance(source, str) or not isinstance(dest, str):
        raise CodecError("a relayed message needs string fields f (source) and t (destination)")
    try:
        source, dest = validate_urn(source), validate_urn(dest)
    except UrnError as exc:
        raise CodecError(f"a relayed message names a bad URN: {exc}") from None
    if len(frames) != 1:
        raise CodecError(f"a relayed message has exactly one frame (the sealed message), not {len(frames)}")
    sealed = bytes(frames[0])
    if len(sealed) > MAX_SEALED_BYTES:
        raise TooLarge(f"a relayed message of {len(sealed)} bytes exceeds {MAX_SEALED_BYTES}")
    return source, dest, sealed


class Sealer:
    """Seals and opens msg/1 messages between this identity and peers' keys (one NaCl box per
    peer key, its shared secret computed once; at most `keep` boxes remembered)."""

    def __init__(self, identity: Identity, keep: int = 4096) -> None:
        secret = nacl.bindings.crypto_sign_ed25519_sk_to_curve25519(identity.seed + identity.public_key)
        self._secret = nacl.public.PrivateKey(secret)
        self._boxes: dict[bytes, nacl.public.Box] = {}
        self._keep = keep

    def _box(self, peer_key: bytes) -> nacl.public.Box:
        box = self._boxes.get(peer_key)
        if box is None:
            if len(self._boxes) >= self._keep:
                self._boxes.clear()
            try:
                public = nacl.public.PublicKey(nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(peer_key))
            except (nacl.exceptions.CryptoError, ValueError, TypeError) as exc:
                raise SignatureError(f"key {peer_key.hex()[:16]}… is not a usable Ed25519 public key") from exc
            box = self._boxes[peer_key] = nacl.public.Box(self._secret, public)
        return box

    def seal(self, peer_key: bytes, source: str, dest: str, parts: Sequence[bytes]) -> bytes:
        """The sealed form of a message's frames `parts`, from `source` (us) to `dest` (key `peer_key`)."""
        plain = msgpack.packb([source, dest, [bytes(p) for p in parts]], use_bin_type=True)
        return bytes(self._box(peer_key).encrypt(plain))

    def open(self, peer_key: bytes, source: str, dest: str, sealed: bytes) -> list[bytes]:
        """The frames sealed by `peer_key` (the holder of `source`) for `dest` (us). Raises
        SignatureError if the box was not made by that key for us, CodecError if its content is
        malformed or names another source or destination than the envelope did."""
        try:
            plain = self._box(peer_key).decrypt(sealed)
        except (nacl.exceptions.CryptoError, ValueError, TypeError):
            raise SignatureError(f"a relayed message said to be from {source} was not sealed by its key "
                                 f"{peer_key.hex()[:16]}… for {dest}; dropped") from None
        try:
            got = msgpack.unpackb(plain, raw=False)
        except Exception:  # msgpack raises many types
            raise CodecError("a sealed message does not hold msgpack") from None
        if (not isinstance(got, list) or len(got) != 3 or not isinstance(got[2], list) or not got[2]
                or not all(isinstance(p, bytes) for p in got[2])):
            raise CodecError("a sealed message must hold [source, destination, [frames]]")
        if got[0] != source or got[1] != dest:
            raise CodecError(f"a sealed message from {got[0]!r} to {got[1]!r} arrived as {source} -> {dest}")
        return got[2]


# --- the gateway's core ------------------------------------------------------------------------

@dataclass(frozen=True)
class ToPeer:
    """Send `parts` to process `dest` at `endpoint` (its key `key`)."""
    dest: str
    endpoint: str
    key: str
    parts: tuple[bytes, ...]


@dataclass(frozen=True)
class ToSender:
    """Send `parts` back on the connection `conn` (the ROUTER identity a sender used)."""
    conn: bytes
    parts: tuple[bytes, ...]


@dataclass(frozen=True)
class Lookup:
    """Find where `dest` listens (the shell answers with `RelayCore.resolved`)."""
    dest: str


Effect = ToPeer | ToSender | Lookup


@dataclass
class _Dest:
    endpoint: str | None = None
    key: str | None = None
    resolved_at: float = -1e18
    looking: bool = False
    queue: deque[tuple[str, tuple[bytes, ...]]] = field(default_factory=deque)     # (source, frames)
    used_at: float = 0.0


@dataclass
class _Pair:
    forwarded: int = 0
    returned: int = 0
    dropped: int = 0
    bytes: int = 0


class RelayCore:
    """Forwarding between senders and destinations, no I/O.

    Invariants: a frame goes only to the destination it names, at the place last looked up; an
    ack goes back only on the connection the destination's peer (the `t` of the ack) last sent
    from, and only if it came from the destination it names; a destination being looked up
    holds at most `queue_max` messages (more are dropped and counted: the sender's channel
    retransmits them); destinations are looked up again every `refresh_s` while in use; state
    unused for `forget_s` is forgotten, so memory follows live traffic.
    """

    def __init__(self, *, queue_max: int = 1024, refresh_s: float = 5.0, forget_s: float = 120.0) -> None:
        self.queue_max, self.refresh_s, self.forget_s = queue_max, refresh_s, forget_s
        self.senders: dict[str, tuple[bytes, float]] = {}      # source URN -> (connection, last used)
        self.dests: dict[str, _Dest] = {}
        self.pairs: dict[tuple[str, str], _Pair] = {}

    def _pair(self, source: str, dest: str) -> _Pair:
        pair = self.pairs.get((source, dest))
        if pair is None:
            pair = self.pairs[(source, dest)] = _Pair()
        return pair

    def from_sender(self, conn: bytes, source: str, dest: str, parts: Sequence[bytes], now: float) -> list[Effect]:
        """A message from `source` (whose key the shell checked) on connection `conn` for `dest`."""
        self.senders[source] = (conn, now)
        d = self.dests.get(dest)
        if d is None:
            d = self.dests[dest] = _Dest()
        d.used_at = now
        pair = self._pair(source, dest)
        effects: list[Effect] = []
        if not d.looking and (d.endpoint is None or now - d.resolved_at >= self.refresh_s):
            d.looking = True
            effects.append(Lookup(dest))
        if d.endpoint is None or d.key is None:
            if len(d.queue) >= self.queue_max:
                pair.dropped += 1
            else:
                d.queue.append((source, tuple(parts)))
            return effects
        pair.forwarded += 1
        pair.bytes += sum(len(p) for p in parts)
        effects.append(ToPeer(dest, d.endpoint, d.key, tuple(parts)))
        return effects

    def resolved(self, dest: str, endpoint: str | None, key: str | None, now: float) -> list[Effect]:
        """Where `dest` listens (None: nowhere we can reach; its queue is dropped and its senders
        find out end to end, by their own deadlines or the catalog)."""
        d = self.dests.get(dest)
        if d is None:
            return []
        d.looking, d.resolved_at = False, now
        if endpoint is None or key is None:
            if d.endpoint is None:           # never found: what waited is dropped
                while d.queue:
                    self._pair(d.queue.popleft()[0], dest).dropped += 1
            # else keep the last known place (a failed look-up is often a blip); nothing is queued then
            return []
        d.endpoint, d.key = endpoint, key
        effects: list[Effect] = []
        while d.queue:
            source, parts = d.queue.popleft()
            pair = self._pair(source, dest)
            pair.forwarded += 1
            pair.bytes += sum(len(p) for p in parts)
            effects.append(ToPeer(dest, endpoint, key, parts))
        return effects

    def from_peer(self, peer: str, source: str, dest: str, parts: Sequence[bytes], now: float) -> list[Effect]:
        """A message (an ack) that process `peer` sent back: from `source` for `dest`."""
        if source != peer:
            self._pair(dest, peer).dropped += 1
            return []
        got = self.senders.get(dest)
        pair = self._pair(dest, peer)
        if got is None:
            pair.dropped += 1
            return []
        self.senders[dest] = (got[0], now)
        pair.returned += 1
        return [ToSender(got[0], tuple(parts))]

    def tick(self, now: float) -> list[str]:
        """Forget what has not been used for `forget_s`; returns the destinations forgotten (the
        shell closes their links)."""
        for source, (_, at) in list(self.senders.items()):
            if now - at >= self.forget_s:
                del self.senders[source]
        gone = [dest for dest, d in self.dests.items() if now - d.used_at >= self.forget_s and not d.looking]
        for dest in gone:
            del self.dests[dest]
        return gone

    def stats(self) -> dict[str, dict[str, int]]:
        """Per "source -> destination": messages forwarded, acks returned, dropped, bytes."""
        return {f"{s} -> {d}": {"forwarded": p.forwarded, "returned": p.returned, "dropped": p.dropped,
                                "bytes": p.bytes} for (s, d), p in self.pairs.items()}
