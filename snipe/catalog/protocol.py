"""The client-facing catalog protocol, `rcds/1`: names and limits shared by server and client.

Requests (client -> replica; every reply echoes the request id, kind "ok" or "error"):
  hello                             -> {protocols: {name: [versions]}, replica: id, key: hex}
  put     frames: assertions        -> {results: [[status, code, message, rev], ...]}
  get     {urn, name?}              -> frames: every record held, tombstones included (with a
                                       name: that name's, and the URN's reserved names, which
                                       readers need to believe it: ownership and delegation)
  query   {prefix, where, limit}    -> frames: every record of each matching URN
  watch   {watch, prefix, from_rev?}-> {rev, first_rev}; then events (below) or error "resync"
  unwatch {watch}                   -> {}
  status                            -> {replica, rev, first_rev, count, peers, ...}
  admitted {key} or {curve}         -> {key, reasons: [urn]}: the URNs whose assertions admit the
                                       key (given as Ed25519, or as the X25519 key of a handshake)
Events (replica -> client, request id 0):
  event     {watch, prev, revs: [int], kinds: [str]}  frames: one record per change
  heartbeat {watch, rev}                              sent every HEARTBEAT_S while idle
  lagged    {watch, after}                            events after `after` were not sent
"""

from __future__ import annotations

PROTOCOL = "rcds"
VERSION = 1
VERSIONS = (1,)

HEARTBEAT_S = 1.0
MAX_BATCH_RECORDS = 10_000
MAX_QUERY_URNS = 100_000

# put result statuses
STORED = "stored"      # new here
HELD = "held"          # identical record already held (idempotent retry)
REFUSED = "refused"

REPLICA_SET_URN = "urn:snipe:group:rcds-replicas"
REPLICA_NAME_PREFIX = "replica."
