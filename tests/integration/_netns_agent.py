"""Runs an edge agent on the device host of the network-cut test until STOP_FILE exists, printing one JSON
line per request: {"fallback": bool, "ok": bool, "reason": str}.

    python _netns_agent.py FRONTEND CACHE_DIR INPUT_NAME STOP_FILE
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from edge_agent.agent import EdgeAgent
from edge_agent.config import AgentConfig
from splitinfer.zoo import build


def main() -> int:
    frontend, cache, input_name, stop = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4])
    model, example = build("tiny_cnn")
    with torch.no_grad():
        expected = model(example[0])
    agent = EdgeAgent(
        AgentConfig(device_id="phone-cut", frontend=frontend, pool=frontend, cache_dir=cache, emulated_battery=True,
                    emulated_uplink_mbps=50.0, plan_ttl_s=0.0, connect_timeout_s=1.0, request_timeout_s=3.0),
        compute_flops=5e6,
    )  # fmt: skip
    while not stop.exists():
        result = agent.infer("tiny_cnn", {input_name: example[0]})
        [output] = result.outputs.values()
        ok = bool(torch.allclose(output, expected, rtol=1e-3, atol=1e-3))
        print(json.dumps({"fallback": result.device_only_fallback, "ok": ok, "reason": result.reason}), flush=True)
        time.sleep(0.2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
