"""Messaging: unicast channels and route selection (SNIPE sections 4.3 and 4.5)."""
