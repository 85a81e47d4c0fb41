"""Separate hosts on one machine: a device, an edge and a cloud host in Linux network namespaces.

For tests and benchmarks that must cross a real network stack with a real bandwidth limit. The device and
the edge host share a veth link shaped with tc tbf in both directions (netem is not available on every
kernel, tbf is); the edge and cloud hosts share a link, unshaped or shaped to its own rate
(``cloud_mbps``), and the edge host routes between them.

A token bucket lets its bucket's worth through at once after an idle pause, where a real link takes every
byte's serialisation time; small request-sized writes then look free (htb with a burst of a few ms and
1500-byte packets passed 2 KB at 0.13 Mbps in 0.1 ms instead of 123 ms). So each shaped link gets an MTU
sized to the rate (:func:`shaping`): one segment carries about 1 ms of payload at the nominal rate (the
segment size is at least 48 bytes, Linux's smallest MSS, and at most 1448), the bucket holds exactly one
packet, and the token rate is raised by the per-packet header bytes (66: Ethernet, IPv4, TCP with
timestamps) so that TCP payload moves at the nominal rate. What a transfer gets early is then one segment
(1 ms of payload; 3 ms at CAT1's 0.13 Mbps, where the 48-byte floor binds), not a burst.

    with Testbed.create(uplink_mbps=8) as bed:
        bed.spawn("cloud", ["etcd", ...])
        bed.set_rate(2.0)               # step the device link's bandwidth

Needs root (CAP_NET_ADMIN) and iproute2; :func:`available` says whether this machine can.

Emulated hardware lives here too, never in the production code paths: :class:`Slowdown` makes a server node
compute as a machine ``factor`` times slower would (a compute hook for ``start_node``), :class:`EmulatedDevice`
makes an edge agent compute and send as a slower device on a slower link would (a ``DeviceHook``), and
``python -m splitinfer.testbed node --slowdown F [splitinfer-server arguments]`` runs such a node as a process.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

__all__ = ["EmulatedDevice", "Shaping", "Slowdown", "Testbed", "available", "main", "shaping"]

HOSTS = ("device", "edge", "cloud")


def _run(*command: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip()}")


def available() -> tuple[bool, str]:
    """(True, "") when namespaces can be made here, else (False, why)."""
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return False, "iproute2 (ip, tc) is not installed"
    if os.geteuid() != 0:
        return False, "network namespaces need root"
    probe = f"si-probe-{uuid.uuid4().hex[:6]}"
    try:
        _run("ip", "netns", "add", probe)
    except RuntimeError as exc:
        return False, str(exc)
    _run("ip", "netns", "del", probe)
    return True, ""


#: Bytes a TCP/IPv4 segment carries on a veth besides its payload: Ethernet 14, IPv4 20, TCP 20 + 12 (timestamps).
HEADER_BYTES = 66
#: Payload one segment may carry at the nominal rate: what a shaped link lets through early after idle.
EARLY_S = 0.001
MIN_MSS, MAX_MSS = 48, 1448  # Linux's tcp_min_snd_mss; the MSS of a 1500-byte MTU


@dataclass(frozen=True, slots=True)
class Shaping:
    """How one shaped link is set up: its MTU and a tbf of ``rate_bps`` (wire bytes) and one packet's bucket."""

    mtu: int
    rate_bps: int
    burst: int
    limit: int

    @property
    def mss(self) -> int:
        return self.mtu - (HEADER_BYTES - 14)

    def tbf_args(self) -> list[str]:
        return ["rate", f"{self.rate_bps}bit", "burst", str(self.burst), "limit", str(self.limit)]


def shaping(mbps: float) -> Shaping:
    """The MTU and tbf settings under which TCP payload crosses at ``mbps`` and no more than one segment of
    about :data:`EARLY_S` of payload goes through early after idle (see the module docstring)."""
    if not mbps > 0:
        raise ValueError(f"a shaped link needs a rate above 0, got {mbps}")
    mss = min(MAX_MSS, max(MIN_MSS, round(mbps * 1e6 / 8 * EARLY_S)))
    mtu = mss + HEADER_BYTES - 14
    frame = mss + HEADER_BYTES
    rate_bps = round(mbps * 1e6 * frame / mss)
    # The bucket holds one frame (tbf drops packets larger than its bucket; a few bytes of slack absorb the
    # kernel's rounding of the bucket to its time units). The queue is generous, as a 1000-packet pfifo of
    # full frames was: requests here are sequential and a drop would cost a retransmission timeout.
    return Shaping(mtu=mtu, rate_bps=rate_bps, burst=frame + 8, limit=max(1_500_000, rate_bps // 8))


@dataclass
class Testbed:
    """Three namespaces and their addresses; ``address[host]`` is where a service on that host listens."""

    __test__ = False  # not a pytest test class

    tag: str
    address: dict[str, str]
    uplink_mbps: float
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @classmethod
    def create(cls, uplink_mbps: float, subnet: int | None = None, cloud_mbps: float | None = None) -> Testbed:
        """The three hosts; the device<->edge link shaped to ``uplink_mbps`` and, when ``cloud_mbps`` is given,
        the edge<->cloud link to its own rate (else unshaped)."""
        tag = uuid.uuid4().hex[:6]
        octet = subnet if subnet is not None else 100 + int(tag, 16) % 100
        bed = cls(
            tag,
            {"device": f"10.{octet}.1.1", "edge": f"10.{octet}.1.2", "cloud": f"10.{octet}.2.2"},
            uplink_mbps,
        )
        edge_to_cloud = f"10.{octet}.2.1"
        try:
            for host in HOSTS:
                _run("ip", "netns", "add", bed.ns(host))
                bed.run(host, "ip", "link", "set", "lo", "up")
            bed._link("device", "edge", bed.address["device"], bed.address["edge"], "dv", "ed")
            bed._link("edge", "cloud", edge_to_cloud, bed.address["cloud"], "ec", "cl")
            bed.run("device", "ip", "route", "add", "default", "via", bed.address["edge"])
            bed.run("cloud", "ip", "route", "add", "default", "via", edge_to_cloud)
            bed.run("edge", "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
            shaped = [("device", f"dv{tag}", uplink_mbps), ("edge", f"ed{tag}", uplink_mbps)]
            if cloud_mbps is not None:
                shaped += [("edge", f"ec{tag}", cloud_mbps), ("cloud", f"cl{tag}", cloud_mbps)]
            for host, dev, mbps in shaped:
                # One MTU-sized segment per packet: with segmentation offload a veth hands the shaper socket
                # writes of up to 64 KiB as one packet, which went through at line rate on tokens the bucket
                # had (measured at 1.1 Mbps: 32 KiB after an idle 0.3 s in 0.2 ms instead of 238 ms).
                bed.run(host, "ip", "link", "set", "dev", dev, "gso_max_segs", "1")
                bed._shape(host, dev, mbps, "add")
        except Exception:
            bed.close()
            raise
        return bed

    def ns(self, host: str) -> str:
        return f"si-{host}-{self.tag}"

    def _link(self, a: str, b: str, address_a: str, address_b: str, name_a: str, name_b: str) -> None:
        dev_a, dev_b = f"{name_a}{self.tag}", f"{name_b}{self.tag}"
        _run(
            "ip", "link", "add", dev_a, "netns", self.ns(a), "type", "veth", "peer", "name", dev_b, "netns", self.ns(b)
        )
        for host, dev, address in ((a, dev_a, address_a), (b, dev_b, address_b)):
            self.run(host, "ip", "addr", "add", f"{address}/24", "dev", dev)
            self.run(host, "ip", "link", "set", dev, "up")

    def _shape(self, host: str, dev: str, mbps: float, verb: str) -> None:
        shape = shaping(mbps)
        self.run(host, "ip", "link", "set", "dev", dev, "mtu", str(shape.mtu))
        self.run(host, "tc", "qdisc", verb, "dev", dev, "root", "handle", "1:", "tbf", *shape.tbf_args())

    def set_rate(self, mbps: float) -> None:
        """Changes the device<->edge bandwidth, both directions, in place. The link's MTU follows the rate
        (:func:`shaping`); open connections learn the new one by path-MTU discovery on their next write."""
        for host, dev in (("device", f"dv{self.tag}"), ("edge", f"ed{self.tag}")):
            self._shape(host, dev, mbps, "change")
        self.uplink_mbps = mbps

    def set_link(self, up: bool) -> None:
        """Cuts (or restores) the device<->edge link, as when a device loses its network."""
        self.run("device", "ip", "link", "set", f"dv{self.tag}", "up" if up else "down")
        if up:
            self.run("device", "ip", "route", "replace", "default", "via", self.address["edge"])

    def run(self, host: str, *command: str) -> None:
        _run("ip", "netns", "exec", self.ns(host), *command)

    def command(self, host: str, command: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns(host), *command]

    def spawn(self, host: str, command: Sequence[str], log: Path | IO[bytes] | None = None) -> subprocess.Popen[bytes]:
        """Starts a long-running process on ``host``; it is stopped by :meth:`close`."""
        out: IO[bytes] | int = subprocess.DEVNULL
        if isinstance(log, Path):
            out = log.open("ab")
        elif log is not None:
            out = log
        process = subprocess.Popen(self.command(host, command), stdout=out, stderr=subprocess.STDOUT)
        self.processes.append(process)
        return process

    def close(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
        for process in reversed(self.processes):
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()
        for host in HOSTS:
            subprocess.run(["ip", "netns", "del", self.ns(host)], capture_output=True)

    def __enter__(self) -> Testbed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class Slowdown:
    """A compute hook (``server_node.compute.ComputeHook``): each partition run is stretched to ``factor`` times
    its real duration (the compute thread sleeps, holding its slot), and the node reports ``factor`` times
    fewer FLOP/s. For demos and tests of heterogeneous clusters on one machine."""

    factor: float

    def __post_init__(self) -> None:
        if self.factor < 1:
            raise ValueError(f"a slowdown factor must be >= 1, got {self.factor}")

    def after_run(self, partition: object, elapsed_s: float) -> None:
        if self.factor > 1:
            time.sleep(elapsed_s * (self.factor - 1))

    def reported_flops(self, measured: float) -> float:
        return measured / self.factor


@dataclass
class EmulatedDevice:
    """A device hook (``edge_agent.hooks.DeviceHook``): each partition the agent runs is stretched to
    ``slowdown`` times its real duration, the agent reports ``slowdown`` times fewer FLOP/s, and a request's
    tensors take as long to leave as the link ``network.emulated_uplink_mbps`` (when set; the demo and tests
    change it at run time) would need, plus half the RTT."""

    slowdown: float
    network: Any

    def __post_init__(self) -> None:
        if self.slowdown < 1:
            raise ValueError(f"a slowdown factor must be >= 1, got {self.slowdown}")

    def after_run(self, partition: str, elapsed_s: float) -> None:
        if self.slowdown > 1:
            time.sleep(elapsed_s * (self.slowdown - 1))

    def before_send(self, nbytes: int) -> None:
        mbps = self.network.emulated_uplink_mbps
        if mbps:
            time.sleep(nbytes * 8 / (mbps * 1e6) + self.network.rtt_ms / 2e3)

    def reported_flops(self, measured: float) -> float:
        return measured / self.slowdown


@dataclass
class ModelledDevice:
    """A device hook of fixed speed, independent of the machine the emulation runs on: a partition takes
    exactly ``flops_of(partition) / flops`` seconds (the run is stretched to that; a run already slower is
    left as it is), the agent reports ``flops``, and a request's tensors take as long to leave as an
    ``uplink_mbps`` link needs, plus ``rtt_ms / 2``. What the cost model assumes, so that predicted and
    measured device times can be compared on a busy machine."""

    flops: float
    uplink_mbps: float
    flops_of: Callable[[str], float]
    rtt_ms: float = 0.0

    def __post_init__(self) -> None:
        if not self.flops > 0 or not self.uplink_mbps > 0:
            raise ValueError("a modelled device needs flops and uplink_mbps above 0")

    def after_run(self, partition: str, elapsed_s: float) -> None:
        target_s = self.flops_of(partition) / self.flops
        if target_s > elapsed_s:
            time.sleep(target_s - elapsed_s)

    def before_send(self, nbytes: int) -> None:
        time.sleep(nbytes * 8 / (self.uplink_mbps * 1e6) + self.rtt_ms / 2e3)

    def reported_flops(self, measured: float) -> float:
        return self.flops


def main(argv: list[str] | None = None) -> int:
    """``node --slowdown F ARGS...``: a server node (``splitinfer-server ARGS``) emulating a slower machine."""
    cli = argparse.ArgumentParser(prog="python -m splitinfer.testbed")
    sub = cli.add_subparsers(dest="command", required=True)
    node = sub.add_parser("node", help="run a server node that computes FACTOR times slower")
    node.add_argument("--slowdown", type=float, required=True)
    args, rest = cli.parse_known_args(argv)
    from server_node.__main__ import main as node_main

    return node_main(rest, compute_hook=Slowdown(args.slowdown))


if __name__ == "__main__":
    sys.exit(main())
