"""An attack on this session's changes to issue #13's data plane, as a hostile or careless client would.

Zero-copy decode (``decode_wire(share=True)``, ``LoadedPartition.input_effects``): a partition that only reads
its inputs is fed the received bytes in place; a writer gets a private copy. Frames pad payloads of 64 KiB
and more to a 16-byte aligned offset (``Tensor.padding``). The result store commits in groups
(``GroupCommit`` / ``ResultStore.put_many``). Real servers on port 0 (in-process nodes and front-ends, so a
test can read their in-flight counts, budgets and stores).

The tests after "Found by this attack" failed on the code as first committed (a writer fed a tensor computed on
the node, or a reader's in-place view of the received bytes, without a copy) and pass since bd68bcb; the
others are properties that held from the start. ``input_effects`` missing eval dropout's alias (pure core:
tests/unit/test_attack_session4.py) is fixed too: the operator is listed as returning its input.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

import server_node.executor as executor_module
from server_node.config import NodeConfig
from server_node.server import RunningNode, start_node
from splitinfer.codecs import WireTensor, decode_wire, encode_tensor, encode_wire
from splitinfer.program import Node, Program, Ref, ValueSpec
from splitinfer.runtime import PartitionKey, save_partition_artifact
from splitinfer.transport import frames
from splitinfer.transport.clients import NodeClient
from splitinfer.v1 import model_server_pb2, route_pb2, tensor_pb2
from tests.integration._system import SmallSystem, small_system
from tests.integration.test_attack_session import Door, _open_calls, _settled

pytestmark = pytest.mark.timeout(120)

N = 1 << 16  # 256 KiB of float32: padded to an aligned offset by the sender, so a reader may use it in place
F32 = torch.float32
X = torch.linspace(-2, 2, N)


def _spec(name: str, dtype: torch.dtype = F32) -> ValueSpec:
    return ValueSpec(name, dtype, (N,))


def _node(name: str, op: str, *args: object, dtype: torch.dtype = F32) -> Node:
    return Node(name, op, tuple(args), {}, (_spec(name, dtype),))


def _reader(src: str, out: str, factor: float) -> Program:
    """out = src * factor; reads src only."""
    return Program(
        inputs=(_spec(src),), outputs=(_spec(out),), nodes=(_node(out, "aten.mul.Tensor", Ref(src), factor),)
    )


def _writer(src: str, out: str) -> Program:
    """Writes src in place (src := 2 src), then out = src^2."""
    return Program(
        inputs=(_spec(src),),
        outputs=(_spec(out),),
        nodes=(_node("a", "aten.add_.Tensor", Ref(src), Ref(src)), _node(out, "aten.mul.Tensor", Ref("a"), Ref("a"))),
    )


#: dtypes a clone partition is loaded for (name suffix -> dtype); each reads its input only.
ODD_DTYPES = {
    "bool": torch.bool,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "f16": torch.float16,
    "bf16": torch.bfloat16,
    "i64": torch.int64,
    "f64": torch.float64,
}

PROGRAMS: dict[str, Program] = {
    "x_to_y": _reader("x", "y", 3.0),  # y = 3x
    "y_writer": _writer("y", "w"),  # writes y; w = (2y)^2
    "y_reader": _reader("y", "z", 1.0),  # z = y
    # y = dropout(x, p=0.5, train=False): eval-mode dropout returns its input itself (the same tensor)
    "x_dropout": Program(
        inputs=(_spec("x"),),
        outputs=(_spec("y"),),
        nodes=(_node("y", "aten.dropout.default", Ref("x"), 0.5, False),),
    ),
    # z = x + w
    "xw_reader": Program(
        inputs=(_spec("x"), _spec("w")),
        outputs=(_spec("z"),),
        nodes=(_node("z", "aten.add.Tensor", Ref("x"), Ref("w")),),
    ),
    # z2 = x + y
    "xy_reader": Program(
        inputs=(_spec("x"), _spec("y")),
        outputs=(_spec("z2"),),
        nodes=(_node("z2", "aten.add.Tensor", Ref("x"), Ref("y")),),
    ),
    # writes x in place (x := 2x), then q = 2x + y + w
    "xyw_writer": Program(
        inputs=(_spec("x"), _spec("y"), _spec("w")),
        outputs=(_spec("q"),),
        nodes=(
            _node("a", "aten.add_.Tensor", Ref("x"), Ref("x")),
            _node("b", "aten.add.Tensor", Ref("a"), Ref("y")),
            _node("q", "aten.add.Tensor", Ref("b"), Ref("w")),
        ),
    ),
    # returns a view of its input (reshape to the same shape) and the input itself
    "x_view": Program(
        inputs=(_spec("x"),),
        outputs=(_spec("v"), _spec("x")),
        nodes=(_node("v", "aten.reshape.default", Ref("x"), [N]),),
    ),
    **{
        f"clone_{suffix}": Program(
            inputs=(_spec("x", dtype),),
            outputs=(_spec("y", dtype),),
            nodes=(_node("y", "aten.clone.default", Ref("x"), dtype=dtype),),
        )
        for suffix, dtype in ODD_DTYPES.items()
    },
}


def _loaded(root: Path, config: NodeConfig) -> RunningNode:
    running = start_node(config)
    try:
        with NodeClient(running.address) as client:
            for name, program in PROGRAMS.items():
                key = PartitionKey("attack4", "fp32", name)
                save_partition_artifact(program, key, Path(root / name))
                client.load_partition(str(root / name), key)
    except BaseException:
        running.stop(0)
        raise
    return running


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    running = _loaded(tmp_path_factory.mktemp("attack4"), NodeConfig(torch_threads=1, benchmark_s=0))
    try:
        yield running
    finally:
        running.stop(0)


@pytest.fixture(scope="module")
def one_stream_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    """A node that takes one data-plane call per peer at a time."""
    config = NodeConfig(torch_threads=1, benchmark_s=0, max_in_flight=4, max_streams=4, max_streams_per_peer=1)
    running = _loaded(tmp_path_factory.mktemp("attack4-one"), config)
    try:
        yield running
    finally:
        running.stop(0)


@pytest.fixture(scope="module")
def serial_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    """A node with one compute thread: runs start in the order they are submitted (deterministic joins)."""
    config = NodeConfig(torch_threads=1, benchmark_s=0, compute_slots=1)
    running = _loaded(tmp_path_factory.mktemp("attack4-serial"), config)
    try:
        yield running
    finally:
        running.stop(0)


def _idle(node: RunningNode, timeout_s: float = 5.0) -> dict[str, int]:
    """What the node still holds for requests, once it reaches zero (or at ``timeout_s``): admission slots,
    budget bytes, requests executing (what the splitinfer_in_flight gauge reads since 52f53d9), joins
    waiting, stream-cap slots."""
    deadline = time.monotonic() + timeout_s
    while True:
        held = {
            "slots": node.host.in_flight,
            "budget": node.servicer.budget.used_bytes,
            "executing": node.servicer._executing,
            "gauge": int(next(iter(node.servicer.metrics.in_flight.collect())).samples[0].value),
            "joins": len(node.servicer.executor.joins),
            "streams": node.limiter.active,
        }
        if not any(held.values()) or time.monotonic() > deadline:
            return held
        time.sleep(0.02)


@pytest.fixture
def shares(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether each decode on the node used the received bytes in place (True) or copied them (False)."""
    seen: list[bool] = []

    def counting(message, payload, limits, *, share=None):  # type: ignore[no-untyped-def]
        out = decode_wire(message, payload, limits, share=share)
        seen.append(bool(out.numel()) and out.data_ptr() == np.frombuffer(payload, np.uint8).ctypes.data)
        return out

    monkeypatch.setattr(executor_module, "decode_wire", counting)
    return seen


def _ref(name: str) -> route_pb2.PartitionRef:
    return route_pb2.PartitionRef(model="attack4", variant="fp32", partition=name)


def _step(node: RunningNode, name: str, inputs: list[str], outputs: list[route_pb2.TensorRoute]) -> route_pb2.RouteStep:
    return route_pb2.RouteStep(partition=_ref(name), addresses=[node.address], input_names=inputs, outputs=outputs)


def _deliver(name: str) -> route_pb2.TensorRoute:
    return route_pb2.TensorRoute(tensor_name=name, deliver=True)


def _to(name: str, *consumers: int) -> route_pb2.TensorRoute:
    return route_pb2.TensorRoute(tensor_name=name, consumer_steps=list(consumers))


def _run(
    node: RunningNode, steps: list[route_pb2.RouteStep], x: torch.Tensor, name: str = "x"
) -> dict[str, torch.Tensor]:
    """Runs the route on the node (one ProcessOnce); the sender's tensor and bytes must stay as sent."""
    header = model_server_pb2.RequestHeader(request_id=uuid.uuid4().hex, route=route_pb2.Route(steps=steps))
    original = x.clone()
    sent = encode_wire(x, name)
    before = bytes(sent.payload)
    with NodeClient(node.address) as client:
        outputs, _ = client.process_wire(header, [sent], timeout_s=30)
    assert bytes(sent.payload) == before and torch.equal(x, original), "the sender's tensor changed"
    return {out: decode_wire(t.head, t.payload) for out, t in outputs.items()}


# --------------------------------------------------------------------------------------------------------------
# Properties that hold


def test_a_partition_returning_a_view_of_its_input_gets_a_private_copy(node: RunningNode, shares: list[bool]) -> None:
    """A partition whose outputs are its input (and a view of it) is fed a copy, and answers right."""
    out = _run(node, [_step(node, "x_view", ["x"], [_deliver("v"), _deliver("x")])], X.clone())
    assert shares == [False]
    assert torch.equal(out["v"], X) and torch.equal(out["x"], X)


def test_a_delivered_tensor_then_written_by_a_local_step_is_delivered_as_computed(
    node: RunningNode, shares: list[bool]
) -> None:
    """y is delivered (encoded, the same bytes as the tensor) and written in place by a local step after: the
    delivered y is 3x, not what the writer made of it."""
    steps = [
        _step(node, "x_to_y", ["x"], [route_pb2.TensorRoute(tensor_name="y", deliver=True, consumer_steps=[1])]),
        _step(node, "y_writer", ["y"], [_deliver("w")]),
    ]
    out = _run(node, steps, X.clone())
    assert torch.equal(out["y"], X * 3)
    assert torch.allclose(out["w"], (6 * X) ** 2)
    assert shares[0] is True  # the reader of x in place


@pytest.mark.parametrize("suffix", sorted(ODD_DTYPES))
def test_odd_dtypes_through_the_in_place_path_answer_the_bytes_sent(
    node: RunningNode, shares: list[bool], suffix: str
) -> None:
    dtype = ODD_DTYPES[suffix]
    generator = torch.Generator().manual_seed(7)
    if dtype == torch.bool:
        x = torch.rand(N, generator=generator) > 0.5
    elif dtype.is_floating_point:
        x = (torch.randn(N, generator=generator) * 100).to(dtype)
    else:
        info = torch.iinfo(dtype)
        x = torch.randint(info.min, info.max, (N,), generator=generator, dtype=dtype)
    out = _run(node, [_step(node, f"clone_{suffix}", ["x"], [_deliver("y")])], x)
    assert out["y"].dtype == dtype and torch.equal(out["y"], x)
    assert shares == [True]  # every size-aligned dtype is used in place (the message is padded to 16 bytes)


def _raw_once(node: RunningNode, name: str, tensors: list[bytes]) -> tuple[grpc.StatusCode, str, bytes]:
    """A ProcessOnce built by hand: the header (field 1) and each serialized Tensor (field 2) as given."""
    header = model_server_pb2.RequestHeader(
        request_id=uuid.uuid4().hex,
        timeout_ms=20_000,
        route=route_pb2.Route(steps=[_step(node, name, ["x"], [_deliver("y")])]),
    )
    body = frames._key(1) + frames._varint_bytes(header.ByteSize()) + header.SerializeToString()
    for tensor in tensors:
        body += frames._key(2) + frames._varint_bytes(len(tensor)) + tensor
    with grpc.insecure_channel(node.address) as channel:
        call = channel.unary_unary(frames.PROCESS_ONCE_METHOD, request_serializer=None, response_deserializer=None)
        try:
            answer = call(body, timeout=20)
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or "", b""
    return grpc.StatusCode.OK, "", answer


def _answer_y(answer: bytes) -> torch.Tensor:
    response = model_server_pb2.ProcessOnceResponse.FromString(answer)
    (tensor,) = [t for t in response.tensors if t.name == "y"]
    return decode_wire(tensor, tensor.payload)


def test_padding_and_payload_fields_that_lie_are_read_as_protobuf_reads_them(node: RunningNode) -> None:
    """Hand-made Tensor messages: padding before or after the payload, huge padding, padding on a small
    tensor, padding with the wrong wire type, a payload repeated (protobuf: the last one counts), a payload
    misaligned on purpose. Each answers what stock protobuf reads from the same bytes, or is refused with
    INVALID_ARGUMENT; the node keeps no slot, byte or stream after any of them."""
    good = encode_tensor(X, "x")
    other = encode_tensor(-X, "x")
    plain = good.SerializeToString()
    pad_key = frames._key(7)

    def padding(n: int) -> bytes:
        return pad_key + frames._varint_bytes(n) + bytes(n)

    meta = tensor_pb2.Tensor()
    meta.CopyFrom(good)
    meta.ClearField("payload")
    head = meta.SerializeToString()
    payload_field = frames._key(6) + frames._varint_bytes(len(good.payload)) + good.payload
    other_field = frames._key(6) + frames._varint_bytes(len(other.payload)) + other.payload
    cases: dict[str, tuple[bytes, torch.Tensor | None]] = {
        "stock protobuf, no padding": (plain, X),
        "padding after the payload": (plain + padding(13), X),
        "1 MiB of padding after the payload": (plain + padding(1 << 20), X),
        "padding before the payload, every offset": (head + padding(5) + payload_field, X),
        "padding as a varint (wrong wire type)": (head + frames._key(7, 0) + b"\x05" + payload_field, X),
        "two payloads: the last counts": (head + payload_field + other_field, -X),
        "two payloads, padding between": (head + payload_field + padding(3) + other_field, -X),
        "three paddings around the payload": (head + padding(1) + padding(2) + payload_field + padding(0), X),
        "the padding field as the only payload": (head + pad_key + frames._varint_bytes(len(good.payload))
                                                  + good.payload, None),
    }  # fmt: skip
    for offset in range(16):  # the payload at every offset modulo 16 (one byte of padding content each)
        cases[f"payload at offset +{offset}"] = (head + padding(offset) + payload_field, X)
    for what, (tensor, expected) in cases.items():
        code, details, answer = _raw_once(node, "x_to_y", [tensor])
        if expected is None:
            assert code == grpc.StatusCode.INVALID_ARGUMENT, f"{what}: {code} {details!r}"
            continue
        stock = tensor_pb2.Tensor.FromString(tensor)  # what protobuf reads: the same tensor
        assert torch.equal(decode_wire(stock, stock.payload), expected), what
        assert code == grpc.StatusCode.OK, f"{what}: {code} {details!r}"
        assert torch.equal(_answer_y(answer), expected * 3), what
    # A small tensor with padding, padding inside a message not even a Tensor's, a payload size that lies.
    lying = tensor_pb2.Tensor()
    lying.CopyFrom(good)
    lying.payload_size_bytes = len(good.payload) + 16
    short = tensor_pb2.Tensor()
    short.CopyFrom(good)
    short.payload = good.payload[:-4]
    short.payload_size_bytes = len(short.payload)
    for what, tensor in {
        "payload_size_bytes over the payload": lying.SerializeToString(),
        "payload one element short": short.SerializeToString(),
        "an empty payload with padding": head + padding(64),
        "a 0-element tensor for an N-element input": tensor_pb2.Tensor(
            name="x", dtype=good.dtype, shape=[0], payload_size_bytes=0, padding=bytes(40)
        ).SerializeToString(),
    }.items():
        code, details, _ = _raw_once(node, "x_to_y", [tensor])
        assert code == grpc.StatusCode.INVALID_ARGUMENT, f"{what}: {code} {details!r}"
    assert _settled([node]) == ([0], [0])
    assert _open_calls([node.limiter]) == [0]


# Joins: a step whose inputs come in two calls

#: A node hosting step 1 that nobody runs (it never answers: nothing listens there).
ELSEWHERE = "127.0.0.1:9"


def _join_route(node: RunningNode, *, writer_after_reader: bool) -> route_pb2.Route:
    """step 1 (elsewhere) makes w for step 2 (here), which also reads x from the caller: a join.
    ``writer_after_reader``: step 0 (here) reads x first (in place) and makes y for steps 2 and 3; step 2
    writes x in place (xyw_writer) and step 3 reads x and y (xy_reader). Otherwise step 2 reads x and w."""
    if writer_after_reader:
        steps = [
            _step(node, "x_to_y", ["x"], [_to("y", 2, 3)]),
            route_pb2.RouteStep(
                partition=_ref("y_writer"), addresses=[ELSEWHERE], input_names=["y"], outputs=[_to("w", 2)]
            ),
            _step(node, "xyw_writer", ["x", "y", "w"], [_deliver("q")]),
            _step(node, "xy_reader", ["x", "y"], [_deliver("z2")]),
        ]
    else:
        steps = [
            _step(node, "x_to_y", ["x"], [_deliver("y")]),
            route_pb2.RouteStep(
                partition=_ref("y_writer"), addresses=[ELSEWHERE], input_names=["y"], outputs=[_to("w", 2)]
            ),
            _step(node, "xw_reader", ["x", "w"], [_deliver("z")]),
        ]
    return route_pb2.Route(steps=steps)


def _once_async(channel: grpc.Channel, header: model_server_pb2.RequestHeader, tensors: list[torch.Tensor],
                names: list[str], timeout_s: float) -> grpc.Future:  # fmt: skip
    call = channel.unary_unary(frames.PROCESS_ONCE_METHOD, request_serializer=None, response_deserializer=None)
    wires = [encode_wire(t, n) for t, n in zip(tensors, names, strict=True)]
    return call.future(frames.once_request(header, wires), timeout=timeout_s)


def _outputs(answer: bytes) -> dict[str, torch.Tensor]:
    response = model_server_pb2.ProcessOnceResponse.FromString(answer)
    return {t.name: decode_wire(t, t.payload) for t in response.tensors}


def _wait_for_join(node: RunningNode) -> None:
    deadline = time.monotonic() + 5
    while len(node.servicer.executor.joins) == 0:
        assert time.monotonic() < deadline, "the first call never reached its join"
        time.sleep(0.01)


def test_a_join_completed_by_a_second_call_runs_once_and_leaves_nothing(node: RunningNode) -> None:
    """Call A brings x to the join step and waits; call B brings w and completes it: B answers z = x + w,
    A ends OK with nothing, and the node keeps no join, slot, byte or stream."""
    route = _join_route(node, writer_after_reader=False)
    rid = uuid.uuid4().hex
    w = torch.full((N,), 0.5)
    with grpc.insecure_channel(node.address) as first, grpc.insecure_channel(node.address) as second:
        a = _once_async(first, model_server_pb2.RequestHeader(request_id=rid, route=route, entry_step=2,
                        timeout_ms=10_000), [X], ["x"], 15)  # fmt: skip
        _wait_for_join(node)
        b = _once_async(second, model_server_pb2.RequestHeader(request_id=rid, route=route, entry_step=2,
                        timeout_ms=10_000), [w], ["w"], 15)  # fmt: skip
        answer_b, answer_a = b.result(), a.result()
    assert torch.equal(_outputs(answer_b)["z"], X + w)
    assert _outputs(answer_a) == {}
    assert _idle(node) == dict.fromkeys(("slots", "budget", "executing", "gauge", "joins", "streams"), 0)


def test_a_call_waiting_at_a_join_holds_its_peers_stream_slot_until_cancelled(one_stream_node: RunningNode) -> None:
    """One call per peer: while A waits at a join, B from the same peer is refused (RESOURCE_EXHAUSTED,
    bounded message) before anything runs; A cancelled gives back its join entry, slot, budget, gauge and
    stream, and the peer's next call runs."""
    node = one_stream_node
    route = _join_route(node, writer_after_reader=False)
    rid = uuid.uuid4().hex
    w = torch.full((N,), 0.5)
    with grpc.insecure_channel(node.address) as channel:
        a = _once_async(channel, model_server_pb2.RequestHeader(request_id=rid, route=route, entry_step=2,
                        timeout_ms=30_000), [X], ["x"], 30)  # fmt: skip
        _wait_for_join(node)
        assert node.limiter.active == 1 and node.servicer._executing == 1
        b = _once_async(channel, model_server_pb2.RequestHeader(request_id=rid, route=route, entry_step=2,
                        timeout_ms=10_000), [w], ["w"], 10)  # fmt: skip
        with pytest.raises(grpc.RpcError) as refused:
            b.result()
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value.details()
        assert len(refused.value.details() or "") <= 1024
        a.cancel()
        assert _idle(node) == dict.fromkeys(("slots", "budget", "executing", "gauge", "joins", "streams"), 0)
    out = _run(node, [_step(node, "x_to_y", ["x"], [_deliver("y")])], X.clone())  # the peer's slot is free
    assert torch.equal(out["y"], X * 3)
    assert _idle(node) == dict.fromkeys(("slots", "budget", "executing", "gauge", "joins", "streams"), 0)


# --------------------------------------------------------------------------------------------------------------
# The result store's group commit, through a real front-end


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmallSystem]:
    with small_system(tmp_path_factory.mktemp("attack4-system"), variants=("fp32",)) as running:
        yield running


def test_concurrent_infer_once_same_and_different_ids_are_each_stored_once_and_all_answered(
    system: SmallSystem,
) -> None:
    """24 concurrent InferOnce calls: 6 ids tried 3 times each with the same inputs, 3 ids once each, and one
    id tried with two different inputs. Every call is answered (OK, or FAILED_PRECONDITION for the id
    reused with other inputs, only one of its two), each id is stored exactly once, and the store answers
    each one's stored result."""
    store = system.frontend.store
    assert store is not None
    door = Door(system.frontend, "attacker-group")
    good = encode_tensor(system.example, system.input_name)
    other = encode_tensor(system.example + 1, system.input_name)
    prefix = uuid.uuid4().hex[:8]
    try:
        assert door.once(door.header(f"{prefix}-warm"), [good])[0] == grpc.StatusCode.OK
        before = store.count()
        calls: list[tuple[str, tensor_pb2.Tensor]] = [(f"{prefix}-same-{i % 6}", good) for i in range(18)]
        calls += [(f"{prefix}-single-{i}", good) for i in range(3)]
        calls += [(f"{prefix}-reused", good), (f"{prefix}-reused", other)]
        with ThreadPoolExecutor(len(calls)) as pool:
            tries = [pool.submit(door.once, door.header(rid, timeout_ms=20_000), [t], 40) for rid, t in calls]
            answers = [t.result() for t in tries]
        codes = [a[0] for a in answers]
        assert codes[:21] == [grpc.StatusCode.OK] * 21, answers
        assert sorted(codes[21:], key=str) == sorted([grpc.StatusCode.OK, grpc.StatusCode.FAILED_PRECONDITION], key=str)
        assert store.count() == before + 6 + 3 + 1  # each id once
        for rid in {rid for rid, _ in calls}:
            assert store.get(rid).request_id == rid
    finally:
        door.close()


def test_a_store_that_refuses_writes_fails_its_group_without_hanging_and_recovers(system: SmallSystem) -> None:
    """The results database refuses every write (``PRAGMA query_only``, as a full disk or a read-only file
    would): each InferOnce of the group is answered, none OK (nothing is answered that is not stored), none
    hangs past its deadline, none UNKNOWN; once writes work again the same ids run and are stored."""
    store = system.frontend.store
    assert store is not None
    door = Door(system.frontend, "attacker-readonly")
    good = encode_tensor(system.example, system.input_name)
    prefix = uuid.uuid4().hex[:8]
    try:
        assert door.once(door.header(f"{prefix}-warm"), [good])[0] == grpc.StatusCode.OK
        before = store.count()
        with store._lock:
            store._db.execute("PRAGMA query_only = ON")
        try:
            with ThreadPoolExecutor(6) as pool:
                tries = [pool.submit(door.once, door.header(f"{prefix}-ro-{i}", timeout_ms=10_000), [good], 20)
                         for i in range(6)]  # fmt: skip
                answers = [t.result() for t in tries]
        finally:
            with store._lock:
                store._db.execute("PRAGMA query_only = OFF")
        for code, details, seconds in answers:
            assert code not in (grpc.StatusCode.OK, grpc.StatusCode.UNKNOWN), (code, details)
            assert seconds < 15, (code, details, seconds)
        assert store.count() == before
        for i in range(6):
            code, details, _ = door.once(door.header(f"{prefix}-ro-{i}"), [good])
            assert code == grpc.StatusCode.OK, details
        assert store.count() == before + 6
    finally:
        door.close()


# --------------------------------------------------------------------------------------------------------------
# Found by this attack (strict xfails at first: a writer fed a tensor computed on the node, or a reader's in-place
# view, without a copy), fixed since by bd68bcb (a writer gets a private copy of every input)


def test_a_local_writer_and_a_local_reader_of_one_computed_tensor_do_not_see_each_other(
    node: RunningNode, shares: list[bool]
) -> None:
    """y = 3x is computed on the node and consumed by two local steps: a writer (y := 2y in place) and a
    reader (z = y). The reader must see y = 3x."""
    steps = [
        _step(node, "x_to_y", ["x"], [_to("y", 1, 2)]),
        _step(node, "y_writer", ["y"], [_deliver("w")]),
        _step(node, "y_reader", ["y"], [_deliver("z")]),
    ]
    out = _run(node, steps, X.clone())
    assert torch.allclose(out["w"], (6 * X) ** 2)
    assert torch.equal(out["z"], X * 3), f"the reader saw y = {float(out['z'][0] / X[0]):.0f}x"


def test_a_writer_behind_an_eval_dropout_never_changes_the_received_input(
    node: RunningNode, shares: list[bool]
) -> None:
    """y = dropout(x) (eval: y is x, the received bytes in place; input_effects counts that alias, see
    tests/unit/test_attack_session4.py), then a local writer of y (w = (2y)^2), then z = x + w. x as
    received must stay x: z = x + 4x^2."""
    steps = [
        _step(node, "x_dropout", ["x"], [_to("y", 1)]),
        _step(node, "y_writer", ["y"], [_to("w", 2)]),
        _step(node, "xw_reader", ["x", "w"], [_deliver("z")]),
    ]
    out = _run(node, steps, X.clone())
    assert torch.allclose(out["z"], X + 4 * X**2), "the reader of x saw the writer's in-place writes"


def test_a_writer_completing_a_join_never_changes_the_other_calls_received_input(serial_node: RunningNode) -> None:
    """Call A: step 0 reads x in place (y = 3x), then waits at the join step 2 (x, y, w); call B brings w,
    completes the join and runs step 2, which writes x in place (q = 2x + y + w); A then runs step 3
    (z2 = x + y), after B's step 2 on the node's one compute thread. A's x must still be x: z2 = 4x (B's
    q = 2x + 3x + w). (Holds: the writer is fed a private copy of the joined x; kept as a guard, since a
    decoded tensor deposited at a join reached a writer by the same line as the two tests above.)"""
    node = serial_node
    route = _join_route(node, writer_after_reader=True)
    rid = uuid.uuid4().hex
    w = torch.full((N,), 0.5)
    with grpc.insecure_channel(node.address) as first, grpc.insecure_channel(node.address) as second:
        a = _once_async(first, model_server_pb2.RequestHeader(request_id=rid, route=route, timeout_ms=10_000),
                        [X], ["x"], 15)  # fmt: skip
        _wait_for_join(node)
        b = _once_async(second, model_server_pb2.RequestHeader(request_id=rid, route=route, entry_step=2,
                        timeout_ms=10_000), [w], ["w"], 15)  # fmt: skip
        answer_b, answer_a = b.result(), a.result()
    q = _outputs(answer_b)["q"]
    assert torch.allclose(q, 5 * X + w, atol=1e-5)
    z2 = _outputs(answer_a)["z2"]
    assert torch.allclose(z2, 4 * X, atol=1e-5), f"A's reader saw x changed: z2 = {float(z2[0] / X[0]):.0f}x"


# --------------------------------------------------------------------------------------------------------------
# More properties that hold: the direct one-step path's deadlines, PutResult's group commit, shutdown


def test_one_step_requests_with_absurd_deadlines_and_headers_never_answer_unknown(node: RunningNode) -> None:
    """The direct one-step path (run_alone) with timeout_ms 0, 1, 2, 2^63 and 2^64-1, an entry_step out of
    range, a missing and an extra tensor: OK / DEADLINE_EXCEEDED / INVALID_ARGUMENT, never UNKNOWN or
    INTERNAL, and nothing held after any of them."""
    route = route_pb2.Route(steps=[_step(node, "x_to_y", ["x"], [_deliver("y")])])
    x = encode_wire(X, "x")
    allowed = {grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED}
    with grpc.insecure_channel(node.address) as channel:
        call = channel.unary_unary(frames.PROCESS_ONCE_METHOD, request_serializer=None, response_deserializer=None)

        def once(header: model_server_pb2.RequestHeader, tensors: list[WireTensor]) -> tuple[grpc.StatusCode, str]:
            try:
                answer = call(frames.once_request(header, tensors), timeout=20)
            except grpc.RpcError as exc:
                return exc.code(), exc.details() or ""
            assert torch.equal(_outputs(answer)["y"], X * 3)
            return grpc.StatusCode.OK, ""

        for timeout_ms in (0, 1, 2, 2**63, 2**64 - 1):
            header = model_server_pb2.RequestHeader(request_id=uuid.uuid4().hex, route=route, timeout_ms=timeout_ms)
            code, details = once(header, [x])
            assert code in allowed, f"timeout_ms={timeout_ms}: {code} {details!r}"
            if timeout_ms in (0, 2**63, 2**64 - 1):
                assert code == grpc.StatusCode.OK, f"timeout_ms={timeout_ms}: {code} {details!r}"
        for what, header, tensors in (
            ("entry_step out of range", model_server_pb2.RequestHeader(request_id="e", route=route, entry_step=5), [x]),
            ("missing input", model_server_pb2.RequestHeader(request_id="m", route=route), []),
            ("extra tensor", model_server_pb2.RequestHeader(request_id="t", route=route), [x, encode_wire(X, "w")]),
            ("duplicate tensor", model_server_pb2.RequestHeader(request_id="d", route=route), [x, x]),
        ):
            code, details = once(header, tensors)
            assert code == grpc.StatusCode.INVALID_ARGUMENT, f"{what}: {code} {details!r}"
    assert _idle(node) == dict.fromkeys(("slots", "budget", "executing", "gauge", "joins", "streams"), 0)


def test_put_result_groups_answer_each_caller_alone_beside_the_front_ends_own_commits(system: SmallSystem) -> None:
    """The front-end's ResultStoreService (its own group commit on the store the dispatcher's group commit
    also writes): 24 concurrent PutResult calls (good ones, retries, malformed ids, one id with two digests)
    beside 6 InferOnce calls. Each PutResult gets its own answer (stored / answered as a retry /
    INVALID_ARGUMENT / FAILED_PRECONDITION for one of the reused id), never UNKNOWN; everything good is
    stored once."""
    from splitinfer.v1 import result_store_pb2, result_store_pb2_grpc

    store = system.frontend.store
    assert store is not None
    prefix = uuid.uuid4().hex[:8]
    door = Door(system.frontend, "attacker-put")
    good = encode_tensor(system.example, system.input_name)

    def result(rid: str, digest: str = "same") -> result_store_pb2.StoredResult:
        return result_store_pb2.StoredResult(request_id=rid, caller="attack-put", input_digest=digest, model="m")

    puts = [result(f"{prefix}-p{i}") for i in range(10)]
    puts += [result(f"{prefix}-p{i}") for i in range(4)]  # retries
    puts += [result(f"{prefix} bad\n{i}") for i in range(4)] + [result("x" * 4000)]
    puts += [result(f"{prefix}-two", "a"), result(f"{prefix}-two", "b")]
    puts += [result(f"{prefix}-p{i}") for i in range(10, 13)]
    try:
        before = store.count()
        with grpc.insecure_channel(system.frontend.address) as channel, ThreadPoolExecutor(30) as pool:
            stub = result_store_pb2_grpc.ResultStoreServiceStub(channel)

            def put(one: result_store_pb2.StoredResult) -> tuple[grpc.StatusCode, bool]:
                try:
                    answer = stub.PutResult(result_store_pb2.PutResultRequest(result=one), timeout=20)
                except grpc.RpcError as exc:
                    return exc.code(), False
                assert answer.result.request_id == one.request_id
                return grpc.StatusCode.OK, answer.stored

            infers = [pool.submit(door.once, door.header(f"{prefix}-i{i}"), [good], 30) for i in range(6)]
            answers = list(pool.map(put, puts))
            assert [f.result()[0] for f in infers] == [grpc.StatusCode.OK] * 6
        assert answers[:10] == [(grpc.StatusCode.OK, True)] * 10
        assert answers[10:14] == [(grpc.StatusCode.OK, False)] * 4  # retries: answered what is stored
        assert [a[0] for a in answers[14:19]] == [grpc.StatusCode.INVALID_ARGUMENT] * 5
        assert sorted(str(a[0]) for a in answers[19:21]) == sorted(
            [str(grpc.StatusCode.OK), str(grpc.StatusCode.FAILED_PRECONDITION)]
        )
        assert answers[21:] == [(grpc.StatusCode.OK, True)] * 3
        assert store.count() == before + 13 + 1 + 6
    finally:
        door.close()


def test_a_front_end_stopped_while_results_commit_keeps_every_answered_result(
    system: SmallSystem, tmp_path: Path
) -> None:
    """A front-end stopped (0.3 s grace) while 16 InferOnce calls run and commit: every call is answered (no
    hang), and every one answered OK is in its results database afterwards (answered => stored)."""
    from splitinfer.frontend.server import FrontEndConfig, start_frontend
    from splitinfer.results.store import ResultStore

    db = tmp_path / "results.db"
    frontend = start_frontend(
        FrontEndConfig(pool_dir=str(system.pool.root), results_db=str(db)), registry=system.registry
    )
    door = Door(frontend, "attacker-shutdown")
    good = encode_tensor(system.example, system.input_name)
    stopped = False
    try:
        assert door.once(door.header("warm"), [good])[0] == grpc.StatusCode.OK
        with ThreadPoolExecutor(16) as pool:
            tries = [pool.submit(door.once, door.header(f"stop-{i}"), [good], 20) for i in range(16)]
            deadline = time.monotonic() + 15
            while not any(t.done() for t in tries) and time.monotonic() < deadline:
                time.sleep(0.005)
            frontend.stop(0.3)
            stopped = True
            answers = {f"stop-{i}": t.result() for i, t in enumerate(tries)}
    finally:
        door.close()
        if not stopped:
            frontend.stop(0.3)
    answered = [rid for rid, (code, _, _) in answers.items() if code == grpc.StatusCode.OK]
    assert answered, answers
    reopened = ResultStore(db)
    try:
        for rid in answered:
            assert reopened.get(rid).request_id == rid, f"{rid} was answered OK but is not stored"
    finally:
        reopened.close()


def test_a_hung_replica_under_shared_replica_sets_is_left_and_each_request_stored_once(system: SmallSystem) -> None:
    """The planner now gives all of a server's partitions one replica set (a request runs whole on the replica
    it enters). Each of the two nodes in turn hangs for 4 s (its event loop blocked, as SIGSTOP leaves it)
    while 6 InferOnce calls with 8 s deadlines run: every one is answered OK inside its deadline, each id is
    stored once, and once the hung node wakes no node holds a slot, a byte or a stream."""
    from tests.integration.test_attack_session import _hang

    store = system.frontend.store
    assert store is not None
    door = Door(system.frontend, "attacker-hung-replica")
    good = encode_tensor(system.example, system.input_name)
    prefix = uuid.uuid4().hex[:8]
    try:
        assert door.once(door.header(f"{prefix}-warm"), [good])[0] == grpc.StatusCode.OK
        for hung in range(len(system.nodes)):
            before = store.count()
            _hang(system.nodes[hung : hung + 1], 4.0)
            with ThreadPoolExecutor(6) as pool:
                tries = [
                    pool.submit(door.once, door.header(f"{prefix}-h{hung}-{i}", timeout_ms=8_000), [good], 12)
                    for i in range(6)
                ]
                answers = [t.result() for t in tries]
            for code, details, seconds in answers:
                assert code == grpc.StatusCode.OK, (hung, code, details)
                assert seconds < 8.0, (hung, seconds)
            assert store.count() == before + 6
            time.sleep(max(0.0, 4.2 - max(a[2] for a in answers)))  # the hung node wakes
            zero = dict.fromkeys(("slots", "budget", "executing", "gauge", "joins", "streams"), 0)
            assert [_idle(n, timeout_s=8.0) for n in system.nodes] == [zero] * len(system.nodes)
            assert store.count() == before + 6  # the late copies stored nothing more
    finally:
        door.close()


def test_streamed_tensors_with_padded_first_frames_feed_readers_and_writers_right(node: RunningNode) -> None:
    """Process streams (64 KiB chunks: the first frame of each tensor padded to an aligned payload, the rest
    in TensorChunks, some with an unknown field appended) into a reader and into a writer of x: both
    answer right; chunks whose offsets leave a gap or overlap are INVALID_ARGUMENT; nothing is held after."""
    pad7 = frames._key(7) + frames._varint_bytes(5) + bytes(5)

    def with_unknown_field(frame: bytes) -> bytes:
        key, pos = frames._varint(memoryview(frame), 0, len(frame))
        _size, pos = frames._varint(memoryview(frame), pos, len(frame))
        body = frame[pos:] + pad7
        return frames._varint_bytes(key) + frames._varint_bytes(len(body)) + body

    def stream(name: str, chunks: list[bytes]) -> tuple[grpc.StatusCode, dict[str, torch.Tensor]]:
        header = model_server_pb2.RequestHeader(
            request_id=uuid.uuid4().hex,
            timeout_ms=20_000,
            route=route_pb2.Route(steps=[_step(node, name, ["x"] if name != "y_writer" else ["y"], [])]),
        )
        with grpc.insecure_channel(node.address) as channel:
            call = channel.stream_stream(frames.PROCESS_METHOD, request_serializer=None, response_deserializer=None)
            try:
                answers = list(call(iter([frames.header_frame(header), *chunks]), timeout=20))
            except grpc.RpcError as exc:
                return exc.code(), {}
        out: dict[str, bytearray] = {}
        heads: dict[str, tensor_pb2.Tensor] = {}
        for raw in answers:
            message = model_server_pb2.ProcessResponse.FromString(raw)
            kind = message.WhichOneof("kind")
            if kind == "tensor":
                heads[message.tensor.name] = message.tensor
                out[message.tensor.name] = bytearray(message.tensor.payload)
            elif kind == "chunk":
                out[message.chunk.name] += message.chunk.data
        return grpc.StatusCode.OK, {n: decode_wire(heads[n], bytes(b)) for n, b in out.items()}

    for name, feed, expected in (("x_to_y", "x", {"y": X * 3}), ("y_writer", "y", {"w": (2 * X) ** 2})):
        sent = encode_wire(X.clone(), feed)
        before = bytes(sent.payload)
        chunks = list(frames.stream_frames([sent], request=True, chunk_bytes=64 << 10))
        assert len(chunks) == 4
        for variant in (chunks, [chunks[0], *(with_unknown_field(c) for c in chunks[1:])]):
            code, outputs = stream(name, variant)
            assert code == grpc.StatusCode.OK, (name, code)
            for out_name, value in expected.items():
                assert torch.allclose(outputs[out_name], value), (name, out_name)
        assert bytes(sent.payload) == before
        for what, bad in (("a gap", [chunks[0], chunks[2], chunks[3]]), ("an overlap", [*chunks, chunks[3]])):
            code, _ = stream(name, bad)
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (name, what, code)
    assert _idle(node) == dict.fromkeys(("slots", "budget", "executing", "gauge", "joins", "streams"), 0)
