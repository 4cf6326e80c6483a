"""Process migration (SNIPE 4.6): the protocol cores (core.py), the state's wire format
(transfer.py), and the shells in the migrating process (origin.py) and its clone (clone.py).
The daemons' part is daemon/migration.py; peers follow redirects in snipe/messaging/endpoint.py.
"""
