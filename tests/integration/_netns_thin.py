"""A thin client on the device host: plans with the front-end (it runs nothing itself) and sends one
request; prints {"outputs": [...shape...], "plan": [...addresses...]} as JSON.

    python _netns_thin.py FRONTEND MODEL
"""

from __future__ import annotations

import json
import sys
import uuid

from splitinfer.codecs import TensorAssembler, decode_tensor, encode_tensor
from splitinfer.transport.channel import open_channel
from splitinfer.v1 import frontend_pb2, frontend_pb2_grpc, plan_pb2
from splitinfer.zoo import build


def main() -> int:
    address, model_name = sys.argv[1], sys.argv[2]
    model, example = build(model_name)
    device = plan_pb2.DeviceState(device_id="thin", compute_flops=0, uplink_mbps=50, rtt_ms=1)
    with open_channel(address) as channel:
        stub = frontend_pb2_grpc.FrontEndServiceStub(channel)
        plan = stub.Plan(frontend_pb2.PlanRequest(model=model_name, device=device), timeout=30).plan
        entry = plan.route.steps[0].input_names[0]
        header = frontend_pb2.InferHeader(request_id=uuid.uuid4().hex, device=device, plan=plan, timeout_ms=30_000)
        messages = [
            frontend_pb2.InferRequest(header=header),
            frontend_pb2.InferRequest(tensor=encode_tensor(example[0], entry)),
        ]
        assembler, outputs = TensorAssembler(), []
        for response in stub.Infer(iter(messages), timeout=30):
            kind = response.WhichOneof("kind")
            if kind in ("tensor", "chunk") and (done := assembler.add(getattr(response, kind))) is not None:
                outputs.append(decode_tensor(done))
    expected = model(example[0]).detach()
    ok = len(outputs) == 1 and bool((outputs[0] - expected).abs().max() < 1e-3)
    addresses = sorted({a for step in plan.route.steps for a in step.addresses})
    json.dump({"ok": ok, "addresses": addresses}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
