"""Runs a model in splitinfer's pool with the unmodified Triton client (the Open Inference Protocol, gRPC).

    pip install 'tritonclient[grpc]'
    python examples/triton_client.py --url 127.0.0.1:50051 --model residual_cnn [--version fp16]

The front-end plans the request with every partition on the server nodes and runs it along the chain; the
client sees an ordinary KServe v2 / Triton server. Without ``--input`` a random input of the model's declared
shape is sent. ``--out`` saves the inputs and outputs (npz); ``--stream N`` also sends N requests over
ModelStreamInfer.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, triton_to_np_dtype


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="front-end host:port")
    parser.add_argument("--model", required=True)
    parser.add_argument("--version", default="", help="a variant (fp32, fp16, ...); empty lets the planner pick")
    parser.add_argument("--input", help=".npy file with the input (default: random, seeded)")
    parser.add_argument("--out", help="save input and outputs here (.npz)")
    parser.add_argument("--stream", type=int, default=0, help="also send this many requests over a stream")
    parser.add_argument("--request-id", default="", help="request id (a retry with the same id is not rerun)")
    args = parser.parse_args(argv)

    client = grpcclient.InferenceServerClient(url=args.url)
    report: dict[str, object] = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(args.model, args.version),
        "server": client.get_server_metadata().name,
        "repository": [(m.name, m.version, m.state) for m in client.get_model_repository_index().models],
    }
    metadata = client.get_model_metadata(args.model, args.version)
    report["versions"] = list(metadata.versions)
    spec = metadata.inputs[0]
    dtype = triton_to_np_dtype(spec.datatype)
    if args.input:
        data = np.load(args.input).astype(dtype)
    else:
        data = np.random.default_rng(0).standard_normal(list(spec.shape)).astype(dtype)
    infer_input = grpcclient.InferInput(spec.name, list(data.shape), spec.datatype)
    infer_input.set_data_from_numpy(data)
    wanted = [grpcclient.InferRequestedOutput(o.name) for o in metadata.outputs]

    result = client.infer(args.model, [infer_input], model_version=args.version, outputs=wanted,
                          request_id=args.request_id)  # fmt: skip
    outputs = {o.name: result.as_numpy(o.name) for o in metadata.outputs}
    report["ran_version"] = result.get_response().model_version
    report["outputs"] = {name: list(value.shape) for name, value in outputs.items()}

    streamed: list[np.ndarray] = []
    if args.stream:
        answers: queue.Queue[tuple[object, object]] = queue.Queue()
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        for k in range(args.stream):
            client.async_stream_infer(args.model, [infer_input], model_version=args.version, outputs=wanted,
                                      request_id=f"{args.request_id or 'stream'}-{k}")  # fmt: skip
        for _ in range(args.stream):
            answer, error = answers.get(timeout=60)
            if error is not None:
                raise SystemExit(f"stream request failed: {error}")
            streamed.append(answer.as_numpy(metadata.outputs[0].name))  # type: ignore[attr-defined]
        client.stop_stream()
        report["streamed"] = len(streamed)

    stats = client.get_inference_statistics(args.model)
    report["inference_count"] = sum(s.inference_count for s in stats.model_stats)
    try:
        client.get_model_metadata("no-such-model")
    except InferenceServerException as exc:
        report["unknown_model"] = exc.status()
    if args.out:
        np.savez(args.out, input=data, **outputs, **{f"stream_{k}": s for k, s in enumerate(streamed)})
    json.dump(report, sys.stdout, indent=1, default=str)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
