"""Multicast groups (SNIPE 4.4): router election, relay and per-sender ordering."""
