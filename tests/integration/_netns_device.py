"""Runs on the device host of the netns test: finds the nodes through etcd and times requests.

    python _netns_device.py ETCD_ENDPOINT ROUTE_FILE INPUT_BYTES REQUESTS
Prints {"seconds": [...], "servers": {...}} as JSON.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from splitinfer.codecs import encode_tensor
from splitinfer.registry import EtcdRegistry
from splitinfer.transport.clients import RouteClient
from splitinfer.v1 import route_pb2


def main() -> int:
    endpoint, route_file, input_name, requests = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    registry = EtcdRegistry(endpoint)
    deadline = time.monotonic() + 30
    route = route_pb2.Route.FromString(route_file.read_bytes())
    wanted = [f"{s.partition.model}@{s.partition.variant}/{s.partition.partition}" for s in route.steps]
    while not all(registry.replicas(p) for p in wanted):
        if time.monotonic() > deadline:
            raise SystemExit(f"the registry never listed {wanted}: {registry.servers()}")
        time.sleep(0.1)
    servers = {p: [r.address for r in registry.replicas(p)] for p in wanted}
    for step, key in zip(route.steps, wanted, strict=True):  # the addresses the nodes advertised
        del step.addresses[:]
        step.addresses.extend(servers[key])
    x = torch.randn(1, 8, 128, 128, generator=torch.Generator().manual_seed(0))
    message = encode_tensor(x, input_name)
    client = RouteClient()
    seconds = []
    for k in range(requests):
        start = time.perf_counter()
        outputs, _ = client.run(route, {input_name: message}, request_id=f"netns-{time.time_ns()}-{k}", timeout_s=60)
        seconds.append(time.perf_counter() - start)
        assert outputs, "no output came back"
    json.dump({"seconds": seconds, "servers": servers, "input_bytes": len(message.payload)}, sys.stdout)
    registry.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
