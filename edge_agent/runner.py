"""The agent's torch-free run path: ONNX partitions on onnxruntime, numpy codecs, one gRPC call to the tail.

What a phone or a Jetson needs, and nothing more: ``numpy``, ``onnxruntime``, ``grpcio``, ``protobuf``,
``lz4``, ``zstandard`` and ``ml_dtypes`` (``pip install 'splitinfer[agent]'``; see the
README). Partitions come from a local copy of the pool (blobs verified by their sha256, the division
manifest parsed into typed data); each runs on an onnxruntime session created once. A partition without an
ONNX twin cannot run here (it needs the interpreter, hence torch) and is refused when loaded.

    python -m edge_agent.runner --pool DIR --division SHA --head p0 --remote p1=HOST:PORT --tail p2 \\
        --input x.npy --output y.npz
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import grpc
import numpy as np

from splitinfer.codecs.arrays import decode_array, encode_array
from splitinfer.codecs.spec import CodecSpec
from splitinfer.errors import FailedPrecondition, InvalidArgument, NotFound
from splitinfer.pool.manifest import DivisionManifest, PartitionEntry
from splitinfer.pool.store import BlobStore
from splitinfer.runtime.ort import OrtOptions, OrtSession
from splitinfer.v1 import model_server_pb2, model_server_pb2_grpc, route_pb2

__all__ = ["DeviceRunner", "route_for"]


def _dtype_name(array: np.ndarray) -> str:
    return str(array.dtype)


def route_for(
    manifest: DivisionManifest,
    partitions: Sequence[str],
    addresses: Mapping[str, Sequence[str]],
    codec: CodecSpec | None = None,
) -> route_pb2.Route:
    """The route running ``partitions`` (a suffix of the division, in order) on ``addresses``; outputs read
    by later routed partitions go to them, model outputs come back to the caller."""
    codec = codec or CodecSpec()
    index = {name: i for i, name in enumerate(partitions)}
    model_outputs = set(manifest.output_names)
    steps = []
    for name in partitions:
        entry = manifest.find(name)
        if entry is None:
            raise NotFound(f"division of {manifest.model} has no partition {name!r}")
        if not addresses.get(name):
            raise InvalidArgument(f"no address for partition {name}")
        outputs = []
        for tensor, successors in entry.successors.items():
            routed = [index[s] for s in successors if s in index]
            outputs.append(
                route_pb2.TensorRoute(
                    tensor_name=tensor,
                    consumer_steps=routed,
                    deliver=not routed or tensor in model_outputs,
                    encoding=codec.to_proto(),
                )
            )
        steps.append(
            route_pb2.RouteStep(
                partition=route_pb2.PartitionRef(model=manifest.model, variant=manifest.variant, partition=name),
                addresses=list(addresses[name]),
                input_names=[s.name for s in entry.inputs],
                outputs=outputs,
            )
        )
    return route_pb2.Route(steps=steps)


class DeviceRunner:
    """The partitions of one division that run on this device, and the call that sends the rest on."""

    def __init__(self, pool_root: Path, division_sha256: str, options: OrtOptions | None = None) -> None:
        self.store = BlobStore(pool_root)
        self.manifest = DivisionManifest.from_bytes(self.store.read(division_sha256))
        self.options = options or OrtOptions()
        self._sessions: dict[str, OrtSession] = {}
        #: Milliseconds each local partition took in its last run.
        self.last_compute_ms: dict[str, float] = {}

    def _entry(self, name: str) -> PartitionEntry:
        entry = self.manifest.find(name)
        if entry is None:
            raise NotFound(f"division of {self.manifest.model} has no partition {name!r}")
        return entry

    def load(self, name: str) -> None:
        """Creates the partition's onnxruntime session (once); FailedPrecondition when it has no ONNX twin."""
        if name in self._sessions:
            return
        entry = self._entry(name)
        if not entry.onnx.available:
            raise FailedPrecondition(
                f"partition {name} of {self.manifest.model}@{self.manifest.variant} has no ONNX model "
                f"({entry.onnx.reason}); it runs on the interpreter only, which needs torch"
            )
        model = self.store.read(entry.files[entry.onnx.file])
        self._sessions[name] = OrtSession(model, entry.onnx.names, self.options)

    def run_local(self, names: Sequence[str], feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs ``names`` in order on this device; returns every tensor known afterwards (inputs included)."""
        values = dict(feeds)
        for name in names:
            self.load(name)
            entry = self._entry(name)
            for spec in entry.inputs:
                if spec.name not in values:
                    raise InvalidArgument(f"partition {name} needs {spec.name!r}, which nothing before it produced")
                array = values[spec.name]
                if not spec.matches(_dtype_name(array), array.shape):
                    raise InvalidArgument(
                        f"partition {name} input {spec.name!r} must be {spec}, got {array.dtype}{list(array.shape)}"
                    )
            start = time.perf_counter()
            values.update(self._sessions[name].run({s.name: values[s.name] for s in entry.inputs}))
            self.last_compute_ms[name] = (time.perf_counter() - start) * 1e3
        return values

    def infer(
        self,
        feeds: Mapping[str, np.ndarray],
        head: Sequence[str],
        remote: Mapping[str, str],
        tail: Sequence[str] = (),
        *,
        codec: CodecSpec | None = None,
        timeout_s: float = 30.0,
    ) -> dict[str, np.ndarray]:
        """Runs ``head`` here, the partitions in ``remote`` (partition -> node address, in division order) on
        their nodes in one ProcessOnce call to the first, then ``tail`` here; returns the model's outputs."""
        names = [p.name for p in self.manifest.partitions]
        middle = list(remote)
        if [*head, *middle, *tail] != names:
            raise InvalidArgument(f"head {list(head)} + remote {middle} + tail {list(tail)} must be {names} in order")
        values = self.run_local(head, feeds)
        if middle:
            route = route_for(self.manifest, middle, {n: [remote[n]] for n in middle}, codec)
            entry = self._entry(middle[0])
            for later in middle[1:]:
                held = [s.name for s in self._entry(later).inputs if s.name in values]
                if held:
                    raise InvalidArgument(f"partition {later} reads {held} from this device; only the first remote "
                                          "partition may")  # fmt: skip
            tensors = [encode_array(values[s.name], s.name, codec) for s in entry.inputs]
            header = model_server_pb2.RequestHeader(
                request_id=uuid.uuid4().hex, route=route, timeout_ms=max(1, int(timeout_s * 1e3)), entry_step=0
            )
            node = remote[middle[0]]
            with grpc.insecure_channel(node) as channel:
                stub = model_server_pb2_grpc.ModelServerServiceStub(channel)
                try:
                    response = stub.ProcessOnce(
                        model_server_pb2.ProcessOnceRequest(header=header, tensors=tensors), timeout=timeout_s
                    )
                except grpc.RpcError as exc:
                    raise FailedPrecondition(f"node {node}: {exc.code().name}: {exc.details()}") from None
            values.update({t.name: decode_array(t) for t in response.tensors})
        values = self.run_local(tail, values)
        missing = [n for n in self.manifest.output_names if n not in values]
        if missing:
            raise FailedPrecondition(f"the route did not deliver {missing}")
        return {n: values[n] for n in self.manifest.output_names}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", type=Path, required=True, help="local pool directory (blobs/)")
    parser.add_argument("--division", required=True, help="division manifest sha256")
    parser.add_argument("--head", default="", help="comma-separated partitions to run here first")
    parser.add_argument("--remote", default="", help="PART=HOST:PORT,... partitions to run on nodes, in order")
    parser.add_argument("--tail", default="", help="comma-separated partitions to run here last")
    parser.add_argument("--codec", default="none", help="codec of the tensors sent to the node")
    parser.add_argument("--input", type=Path, action="append", required=True, help="NAME=FILE.npy or FILE.npy")
    parser.add_argument("--output", type=Path, required=True, help="where to write the outputs (.npz)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    args = parser.parse_args(argv)
    runner = DeviceRunner(args.pool, args.division, OrtOptions(intra_op_threads=args.threads))
    feeds = {}
    for i, item in enumerate(args.input):
        name, _, path = str(item).rpartition("=")
        feeds[name or runner.manifest.input_names[i]] = np.load(path)
    head = [h for h in args.head.split(",") if h]
    tail = [t for t in args.tail.split(",") if t]
    remote = dict(item.split("=", 1) for item in args.remote.split(",") if item)
    if not head and not remote and not tail:
        head = [p.name for p in runner.manifest.partitions]  # everything on the device
    outputs = runner.infer(feeds, head, remote, tail, codec=CodecSpec.parse(args.codec))
    np.savez(args.output, **outputs)  # type: ignore[arg-type]
    print(" ".join(f"{k}={v:.2f}ms" for k, v in runner.last_compute_ms.items()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
