"""Runs a model in splitinfer's pool with the unmodified Triton client (the Open Inference Protocol), over gRPC
or HTTP/REST (KServe v2).

    pip install 'tritonclient[grpc,http]'
    python examples/triton_client.py --url 127.0.0.1:50051 --model residual_cnn [--version fp16]
    python examples/triton_client.py --protocol http --url 127.0.0.1:8000 --model residual_cnn

The front-end plans the request with every partition on the server nodes and runs it along the chain; the
client sees an ordinary KServe v2 / Triton server. Without ``--input`` a random input of the model's declared
shape is sent. ``--out`` saves the inputs and outputs (npz); ``--stream N`` also sends N requests over
ModelStreamInfer (gRPC only); ``--classes K`` asks the classification extension for the top K classes;
``--reload`` unloads the model from the nodes and loads it again (an admin caller's repository API).
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
from typing import Any

import numpy as np
from tritonclient.utils import InferenceServerException, triton_to_np_dtype


def _ints(value: Any) -> Any:
    """gRPC's JSON spells 64-bit integers as strings; HTTP's as numbers: the same numbers either way."""
    if isinstance(value, dict):
        return {k: _ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_ints(v) for v in value]
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="front-end host:port (gRPC), or its REST host:port (http)")
    parser.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    parser.add_argument("--model", required=True)
    parser.add_argument("--version", default="", help="a variant (fp32, fp16, ...); empty lets the planner pick")
    parser.add_argument("--input", help=".npy file with the input (default: random, seeded)")
    parser.add_argument("--out", help="save input and outputs here (.npz)")
    parser.add_argument("--stream", type=int, default=0, help="also send this many requests over a stream (gRPC)")
    parser.add_argument("--request-id", default="", help="request id (echoed; dedup with --dedup)")
    parser.add_argument("--classes", type=int, default=0, help="also ask for the top K classes of the first output")
    parser.add_argument("--json", action="store_true", help="HTTP: send the input and get outputs as JSON arrays")
    parser.add_argument("--reload", action="store_true", help="unload the model from the nodes, then load it again")
    parser.add_argument("--token", default="", help="bearer token (a cluster with authentication on)")
    args = parser.parse_args(argv)

    if args.protocol == "grpc":
        import tritonclient.grpc as client_module
    else:
        import tritonclient.http as client_module  # type: ignore[no-redef]
    headers = {"authorization": f"Bearer {args.token}"} if args.token else None
    client = client_module.InferenceServerClient(url=args.url)
    report: dict[str, object] = {
        "protocol": args.protocol,
        "live": client.is_server_live(headers=headers),
        "ready": client.is_server_ready(headers=headers),
        "model_ready": client.is_model_ready(args.model, args.version, headers=headers),
        "unknown_model_ready": client.is_model_ready("no-such-model", headers=headers),
    }
    as_json = {"as_json": True} if args.protocol == "grpc" else {}
    server = client.get_server_metadata(headers=headers, **as_json)
    report["server"], report["extensions"] = server["name"], server.get("extensions", [])
    index = client.get_model_repository_index(headers=headers, **as_json)
    models = index.get("models", []) if isinstance(index, dict) else index
    report["repository"] = [(m["name"], m.get("version", ""), m.get("state", "")) for m in models]
    metadata = _ints(client.get_model_metadata(args.model, args.version, headers=headers, **as_json))
    report["versions"] = list(metadata["versions"])
    config = _ints(client.get_model_config(args.model, args.version, headers=headers, **as_json))
    config = config.get("config", config)  # gRPC wraps it in {"config": ...}
    report["config"] = {
        "max_batch_size": config.get("max_batch_size", 0),
        "inputs": [(t["name"], t["data_type"], t["dims"]) for t in config.get("input", [])],
        "outputs": [(t["name"], t["data_type"], t["dims"]) for t in config.get("output", [])],
        "dynamic_batching": "dynamic_batching" in config,
    }
    spec = metadata["inputs"][0]
    dtype = triton_to_np_dtype(spec["datatype"])
    if args.input:
        data = np.load(args.input).astype(dtype)
    else:
        data = np.random.default_rng(0).standard_normal(list(spec["shape"])).astype(dtype)
    infer_input = client_module.InferInput(spec["name"], list(data.shape), spec["datatype"])
    if args.protocol == "http":
        infer_input.set_data_from_numpy(data, binary_data=not args.json)
        wanted = [client_module.InferRequestedOutput(o["name"], binary_data=not args.json) for o in metadata["outputs"]]
    else:
        infer_input.set_data_from_numpy(data)
        wanted = [client_module.InferRequestedOutput(o["name"]) for o in metadata["outputs"]]

    result = client.infer(args.model, [infer_input], model_version=args.version, outputs=wanted,
                          request_id=args.request_id, headers=headers)  # fmt: skip
    outputs = {o["name"]: result.as_numpy(o["name"]) for o in metadata["outputs"]}
    response = result.get_response(**as_json)
    report["ran_version"] = response["model_version"]
    report["id"] = response.get("id", "")
    report["outputs"] = {name: list(value.shape) for name, value in outputs.items()}

    if args.classes:
        first = metadata["outputs"][0]["name"]
        asked = client_module.InferRequestedOutput(first, class_count=args.classes)
        ranked = client.infer(args.model, [infer_input], model_version=args.version, outputs=[asked],
                              headers=headers, parameters={"min_accuracy": "0.999"})  # fmt: skip
        report["classes"] = [c.decode() if isinstance(c, bytes) else str(c) for c in ranked.as_numpy(first).reshape(-1)]
        params = ranked.get_response(**as_json).get("parameters", {})
        missed = params.get("requirements_missed", "")
        report["requirements_missed"] = missed.get("string_param", "") if isinstance(missed, dict) else missed

    streamed: list[np.ndarray] = []
    if args.stream and args.protocol == "grpc":
        answers: queue.Queue[tuple[object, object]] = queue.Queue()
        client.start_stream(callback=lambda result, error: answers.put((result, error)), headers=headers)
        for k in range(args.stream):
            client.async_stream_infer(args.model, [infer_input], model_version=args.version, outputs=wanted,
                                      request_id=f"{args.request_id or 'stream'}-{k}")  # fmt: skip
        for _ in range(args.stream):
            answer, error = answers.get(timeout=60)
            if error is not None:
                raise SystemExit(f"stream request failed: {error}")
            streamed.append(answer.as_numpy(metadata["outputs"][0]["name"]))  # type: ignore[attr-defined]
        client.stop_stream()
        report["streamed"] = len(streamed)

    stats = _ints(client.get_inference_statistics(args.model, headers=headers, **as_json))
    model_stats = stats.get("model_stats", [])
    report["inference_count"] = sum(s.get("inference_count", 0) for s in model_stats)
    report["stat_versions"] = sorted({s["version"] for s in model_stats})
    durations = {}
    for s in model_stats:
        for key, value in s.get("inference_stats", {}).items():
            durations[key] = durations.get(key, 0) + value.get("ns", 0)
    report["durations_ns"] = durations
    report["batch_sizes"] = sorted({b["batch_size"] for s in model_stats for b in s.get("batch_stats", [])})
    try:
        client.get_model_metadata("no-such-model", headers=headers)
    except InferenceServerException as exc:
        report["unknown_model"] = exc.status()
    if args.reload:
        client.unload_model(args.model, headers=headers)
        report["ready_after_unload"] = client.is_model_ready(args.model, headers=headers)
        client.load_model(args.model, headers=headers)
    if args.out:
        np.savez(args.out, input=data, **outputs, **{f"stream_{k}": s for k, s in enumerate(streamed)})
    json.dump(report, sys.stdout, indent=1, default=str)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
