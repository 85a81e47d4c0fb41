"""Which nodes host each partition of a division: as the Divider placed it, so that requests cross nodes.

Used by ``make cluster-up`` (nodes named in the cluster config) and by the division controller (nodes named
by their addresses, which is what it divides onto). Pure.
"""

from __future__ import annotations

__all__ = ["placement"]


def placement(
    partitions: list[tuple[str, str]], nodes: list[tuple[str, str]], replicas: int = 1
) -> dict[str, list[str]]:
    """Which nodes host each partition of one division.

    ``partitions`` are (name, host) in topological order, where host is what the Divider sized the partition
    for: a server name, "device" for a device head or tail, or "" when it was not sized for a server.
    ``nodes`` are (name, address). A partition sized for a node of that name goes there; the other server
    partitions are spread in order over the nodes that no partition named (consecutive partitions on
    different nodes, so a request crosses nodes as the division intends); device partitions go on every node
    (a plan runs them on a server when the device should not). Each server partition is also placed on the
    next ``replicas - 1`` nodes in ring order.
    """
    if not nodes:
        return {}
    if replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas}")
    addresses = [address for _, address in nodes]
    by_name = {name: index for index, (name, _) in enumerate(nodes)}
    named = {by_name[host] for _, host in partitions if host in by_name}
    free = [i for i in range(len(nodes)) if i not in named] or list(range(len(nodes)))
    unmatched: dict[str, int] = {}  # a host name the cluster does not have -> the node standing in for it
    placed: dict[str, list[str]] = {}
    spread = 0
    for name, host in partitions:
        if host == "device":
            placed[name] = list(addresses)
            continue
        if host in by_name:
            first = by_name[host]
        elif host and host in unmatched:
            first = unmatched[host]
        else:
            first = free[spread % len(free)]
            spread += 1
            if host:
                unmatched[host] = first
        count = min(replicas, len(nodes))
        placed[name] = [addresses[(first + k) % len(nodes)] for k in range(count)]
    return placed
