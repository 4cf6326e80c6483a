"""Several SNIPE hosts on one machine, as Linux network namespaces, with faults injected.

    from snipe.netlab import Lab, default_topology
    with Lab(default_topology()) as lab:          # needs root, ip, nft, tc
        lab.partition(["h3"])
        lab.exec("ctl", ["snipe-console", "hosts"])

See snipe/netlab/lab.py for what is built and how it is removed, snipe/netlab/relay.py for the
delay relay used when the kernel has no netem, and `bin/snipe-netlab --help` for the command.
"""

from snipe.netlab.lab import Lab, LabError, cleanup_stale, list_runs, netem_available, runs_dir, why_not
from snipe.netlab.topology import HostSpec, NetSpec, Topology, default_topology, simple_topology

__all__ = [
    "HostSpec",
    "Lab",
    "LabError",
    "NetSpec",
    "Topology",
    "cleanup_stale",
    "default_topology",
    "list_runs",
    "netem_available",
    "runs_dir",
    "simple_topology",
    "why_not",
]
