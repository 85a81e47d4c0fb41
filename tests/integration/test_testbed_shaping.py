"""The testbed's shaped link holds its rate for request-sized writes after an idle pause, as a real link does.

With segmentation offload left on, a veth hands htb a 32 KiB socket write as one packet and htb lets it
through at line rate (measured at 1.1 Mbps: 0.2 ms instead of 238 ms), so every small cut looked free.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from splitinfer.testbed import Testbed, available

pytestmark = pytest.mark.skipif(not available()[0], reason=available()[1])

SERVER = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((sys.argv[1], 5000)); s.listen()
c, _ = s.accept()
while True:
    n = int.from_bytes(c.recv(4, socket.MSG_WAITALL), "big")
    if n == 0:
        break
    got = 0
    while got < n:
        got += len(c.recv(n - got))
    c.sendall(b"k")
"""

CLIENT = r"""
import socket, sys, time
c = socket.create_connection((sys.argv[1], 5000)); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
for _ in range(3):
    time.sleep(0.3)  # idle: the bucket refills
    start = time.perf_counter(); c.sendall((16384).to_bytes(4, "big") + b"x" * 16384); c.recv(1)
    print((time.perf_counter() - start) * 1e3)
c.sendall((0).to_bytes(4, "big"))
"""


@pytest.mark.timeout(60)
def test_small_writes_after_idle_take_the_shaped_time() -> None:
    mbps = 1.1
    ideal_ms = 16384 * 8 / (mbps * 1e6) * 1e3  # 119 ms
    with Testbed.create(uplink_mbps=mbps) as bed:
        server = bed.spawn("edge", [sys.executable, "-c", SERVER, bed.address["edge"]])
        time.sleep(0.5)
        done = subprocess.run(
            bed.command("device", [sys.executable, "-c", CLIENT, bed.address["edge"]]),
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        server.wait(timeout=10)
    samples = [float(line) for line in done.stdout.split()]
    assert len(samples) == 3, done.stderr
    # The bucket's burst (a few ms at the rate) is all that may go through early.
    assert min(samples) > 0.8 * ideal_ms, samples
    assert max(samples) < 1.5 * ideal_ms, samples
