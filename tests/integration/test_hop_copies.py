"""Copies on a node hop, through a real node: a partition that only reads its inputs is fed the received bytes
in place, one that writes its inputs in place gets a private copy, and both give the right answers, also
when the same received tensor feeds a writer and a reader of one request (in either order), so that neither
sees what the other did. An in-process node on port 0 (the test counts the copies its decoder makes)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

import server_node.executor as executor_module
from server_node.config import NodeConfig
from server_node.server import RunningNode, start_node
from splitinfer.codecs import decode_wire, encode_wire
from splitinfer.program import Node, Program, Ref, ValueSpec
from splitinfer.runtime import PartitionKey, save_partition_artifact
from splitinfer.transport.clients import NodeClient
from splitinfer.v1 import model_server_pb2, route_pb2

N = 1 << 16  # 256 KiB of float32: padded to an aligned offset by the client
F32 = torch.float32


def _spec(name: str) -> ValueSpec:
    return ValueSpec(name, F32, (N,))


def _node(name: str, op: str, *args: object) -> Node:
    return Node(name, op, tuple(args), {}, (_spec(name),))


#: name -> (program, what it computes from x and, for the two-input ones, y)
PROGRAMS = {
    # writes x in place (x := 2x), then y = (2x)^2
    "writer": Program(
        inputs=(_spec("x"),),
        outputs=(_spec("y"),),
        nodes=(_node("a", "aten.add_.Tensor", Ref("x"), Ref("x")), _node("y", "aten.mul.Tensor", Ref("a"), Ref("a"))),
    ),
    # reads x only: y = 3x
    "reader": Program(inputs=(_spec("x"),), outputs=(_spec("y"),), nodes=(_node("y", "aten.mul.Tensor", Ref("x"), 3),)),
    # reads x and y: z = x + y
    "join_reader": Program(
        inputs=(_spec("x"), _spec("y")),
        outputs=(_spec("z"),),
        nodes=(_node("z", "aten.add.Tensor", Ref("x"), Ref("y")),),
    ),
    # writes x in place (x := x + y), then z = x * 1
    "join_writer": Program(
        inputs=(_spec("x"), _spec("y")),
        outputs=(_spec("z"),),
        nodes=(_node("a", "aten.add_.Tensor", Ref("x"), Ref("y")), _node("z", "aten.mul.Tensor", Ref("a"), 1)),
    ),
}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    running = start_node(NodeConfig(torch_threads=1, benchmark_s=0))
    root = tmp_path_factory.mktemp("copies")
    try:
        with NodeClient(running.address) as client:
            for name, program in PROGRAMS.items():
                key = PartitionKey("copies", "fp32", name)
                save_partition_artifact(program, key, Path(root / name))
                client.load_partition(str(root / name), key)
        yield running
    finally:
        running.stop(0)


class Decodes:
    """What the node's decoder did: whether each decode shared the received bytes (True) or copied them
    (False), and the received bytes with what they held at that moment (to check nobody wrote them)."""

    def __init__(self) -> None:
        self.shared: list[bool] = []
        self.received: list[tuple[memoryview, bytes]] = []

    def untouched(self) -> bool:
        return all(bytes(view) == before for view, before in self.received)


@pytest.fixture
def copies(monkeypatch: pytest.MonkeyPatch) -> Decodes:
    seen = Decodes()

    def counting(message, payload, limits, *, share=None):  # type: ignore[no-untyped-def]
        seen.received.append((memoryview(payload), bytes(payload)))
        out = decode_wire(message, payload, limits, share=share)
        seen.shared.append(out.data_ptr() == np.frombuffer(payload, np.uint8).ctypes.data)
        return out

    monkeypatch.setattr(executor_module, "decode_wire", counting)
    return seen


def _step(name: str, node: RunningNode, inputs: list[str], outputs: list[route_pb2.TensorRoute]) -> route_pb2.RouteStep:
    ref = route_pb2.PartitionRef(model="copies", variant="fp32", partition=name)
    return route_pb2.RouteStep(partition=ref, addresses=[node.address], input_names=inputs, outputs=outputs)


def _run(node: RunningNode, steps: list[route_pb2.RouteStep], x: torch.Tensor) -> dict[str, torch.Tensor]:
    header = model_server_pb2.RequestHeader(request_id=f"r-{id(steps)}", route=route_pb2.Route(steps=steps))
    sent = encode_wire(x, "x")
    before = bytes(sent.payload)
    with NodeClient(node.address) as client:
        outputs, _ = client.process_wire(header, [sent], timeout_s=30)
    assert bytes(sent.payload) == before and torch.equal(x, X)  # the sender's tensor is untouched
    return {name: decode_wire(t.head, t.payload) for name, t in outputs.items()}


X = torch.linspace(-2, 2, N)


def test_a_reader_decodes_in_place_and_a_writer_gets_a_copy(node: RunningNode, copies: Decodes) -> None:
    out = _run(node, [_step("reader", node, ["x"], [route_pb2.TensorRoute(tensor_name="y", deliver=True)])], X.clone())
    assert torch.equal(out["y"], X * 3) and copies.shared == [True]
    copies.shared.clear()
    out = _run(node, [_step("writer", node, ["x"], [route_pb2.TensorRoute(tensor_name="y", deliver=True)])], X.clone())
    assert torch.equal(out["y"], (2 * X) ** 2) and copies.shared == [False] and copies.untouched()


def test_a_writer_before_a_reader_of_the_same_tensor_leaves_it_unchanged(node: RunningNode, copies: Decodes) -> None:
    steps = [
        _step("writer", node, ["x"], [route_pb2.TensorRoute(tensor_name="y", consumer_steps=[1])]),
        _step("join_reader", node, ["x", "y"], [route_pb2.TensorRoute(tensor_name="z", deliver=True)]),
    ]
    out = _run(node, steps, X.clone())
    assert torch.allclose(out["z"], X + (2 * X) ** 2)  # the reader saw x as sent, not the writer's 2x
    assert copies.shared == [False, True] and copies.untouched()  # the writer's private copy; the reader in place


def test_a_writer_after_a_reader_of_the_same_tensor_copies_its_view(node: RunningNode, copies: Decodes) -> None:
    steps = [
        _step("reader", node, ["x"], [route_pb2.TensorRoute(tensor_name="y", consumer_steps=[1])]),
        _step("join_writer", node, ["x", "y"], [route_pb2.TensorRoute(tensor_name="z", deliver=True)]),
    ]
    out = _run(node, steps, X.clone())
    assert torch.allclose(out["z"], X + 3 * X)
    # the reader used the received bytes in place; the writer wrote a copy of that view, not the bytes
    assert copies.shared == [True] and copies.untouched()
