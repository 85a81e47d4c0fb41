"""A thin client on the device host: plans with the front-end (it runs nothing itself) and sends one
request; prints {"outputs": [...shape...], "plan": [...addresses...]} as JSON.

    python _netns_thin.py FRONTEND MODEL
"""

from __future__ import annotations

import json
import sys

from splitinfer.frontend.client import FrontEndClient
from splitinfer.v1 import plan_pb2
from splitinfer.zoo import build


def main() -> int:
    address, model_name = sys.argv[1], sys.argv[2]
    model, example = build(model_name)
    device = plan_pb2.DeviceState(device_id="thin", compute_flops=0, uplink_mbps=50, rtt_ms=1)
    with FrontEndClient(address) as client:
        plan = client.plan(model_name, device)
        entry = plan.entry_tensors[0]  # the front-end keeps the route; the plan says what to send
        outputs, _ = client.infer(plan, device, {entry: example[0]})
    expected = model(example[0]).detach()
    ok = len(outputs) == 1 and bool((next(iter(outputs.values())) - expected).abs().max() < 1e-3)
    addresses = sorted({p.address for p in plan.placements if not p.on_device})
    json.dump({"ok": ok, "addresses": addresses}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
