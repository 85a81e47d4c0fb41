"""Decoding received payloads in place: which partitions may read the received bytes (``input_effects``), when
``decode_wire`` shares memory instead of copying (``share``, alignment), and the frames' padding that puts
payloads at aligned offsets while staying the same protobuf messages."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from splitinfer.codecs import decode_wire, encode_wire
from splitinfer.codecs.wire import SHARE_ALIGNMENT, aligned_buffer, decodes_in_place
from splitinfer.errors import InvalidArgument
from splitinfer.program import Node, Program, Ref, ValueSpec, export_program
from splitinfer.runtime import PartitionKey
from splitinfer.runtime.aliasing import input_effects
from splitinfer.runtime.partition import LoadedPartition, RuntimeOptions
from splitinfer.transport import frames
from splitinfer.v1 import model_server_pb2, tensor_pb2

F32 = torch.float32


def _spec(name: str, shape: tuple[int, ...] = (4,)) -> ValueSpec:
    return ValueSpec(name, F32, shape)


def _program(nodes: list[Node], outputs: list[str], inputs: tuple[str, ...] = ("x",)) -> Program:
    specs = {n.name: n.outputs[0] for n in nodes if n.outputs}
    return Program(inputs=tuple(_spec(i) for i in inputs), outputs=tuple(specs[o] for o in outputs), nodes=tuple(nodes))


def _node(name: str, op: str, *args: object, shape: tuple[int, ...] = (4,)) -> Node:
    return Node(name, op, tuple(args), {}, (_spec(name, shape),))


# What a program does to its inputs


def test_an_exported_functional_model_only_reads_its_inputs() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten())
    effects = input_effects(export_program(model.eval(), (torch.randn(1, 3, 8, 8),)))
    assert effects.read_only and not effects.writes and not effects.returns


def test_an_in_place_op_on_an_input_writes_it() -> None:
    program = _program([_node("a", "aten.add_.Tensor", Ref("x"), Ref("x")), _node("y", "aten.mul.Tensor", Ref("a"), 2)],
                       ["y"])  # fmt: skip
    effects = input_effects(program)
    assert effects.writes == {"x"} and not effects.read_only


def test_an_in_place_op_on_a_view_of_an_input_writes_the_input() -> None:
    program = _program(
        [
            _node("v", "aten.reshape.default", Ref("x"), [2, 2], shape=(2, 2)),
            _node("t", "aten.transpose.int", Ref("v"), 0, 1, shape=(2, 2)),
            _node("m", "aten.masked_fill_.Scalar", Ref("t"), Ref("mask"), 0.0, shape=(2, 2)),
            _node("y", "aten.mul.Tensor", Ref("x"), 2),
        ],
        ["y"],
        inputs=("x", "mask"),
    )
    assert input_effects(program).writes == {"x"}  # the mask is only read


def test_a_split_element_written_in_place_writes_the_input() -> None:
    split = Node("s", "aten.split.Tensor", (Ref("x"), 2), {}, (_spec("s[0]", (2,)), _spec("s[1]", (2,))))
    program = _program(
        [split, _node("e", "getitem", Ref("s"), 1, shape=(2,)), _node("w", "aten.add_.Tensor", Ref("e"), 1.0),
         _node("y", "aten.mul.Tensor", Ref("x"), 2)],
        ["y"],
    )  # fmt: skip
    assert input_effects(program).writes == {"x"}


def test_an_in_place_op_on_a_fresh_value_writes_no_input() -> None:
    program = _program([_node("a", "aten.mul.Tensor", Ref("x"), 2), _node("b", "aten.add_.Tensor", Ref("a"), Ref("x"))],
                       ["b"])  # fmt: skip
    effects = input_effects(program)
    assert effects.read_only  # x is read; only a (the partition's own value) is written


def test_returning_a_view_of_an_input_is_not_read_only() -> None:
    program = _program([_node("y", "aten.reshape.default", Ref("x"), [2, 2], shape=(2, 2))], ["y"])
    effects = input_effects(program)
    assert not effects.writes and effects.returns == {"x"} and not effects.read_only


def test_an_operator_whose_arguments_do_not_fit_its_schema_counts_as_writing() -> None:
    program = _program([_node("y", "aten.mul.Tensor", Ref("x"), 2, 3, 4)], ["y"])
    effects = input_effects(program)
    assert effects.writes == {"x"} and effects.returns == {"x"}


def test_loaded_partition_reports_the_effects_for_both_engines() -> None:
    writer = _program([_node("a", "aten.add_.Tensor", Ref("x"), Ref("x")), _node("y", "aten.mul.Tensor", Ref("a"), 2)],
                      ["y"])  # fmt: skip
    loaded = LoadedPartition(PartitionKey("m", "v", "p"), writer, options=RuntimeOptions(runtime="interpreter"))
    assert loaded.writes_inputs and not loaded.inputs_read_only
    reader = _program([_node("y", "aten.mul.Tensor", Ref("x"), 2)], ["y"])
    loaded = LoadedPartition(PartitionKey("m", "v", "q"), reader, options=RuntimeOptions(runtime="interpreter"))
    assert not loaded.writes_inputs and loaded.inputs_read_only


# When decoding shares memory


def _address(view: torch.Tensor | memoryview) -> int:
    if isinstance(view, torch.Tensor):
        return int(view.data_ptr())
    return int(np.frombuffer(view, np.uint8).ctypes.data)


def _received(value: torch.Tensor, offset: int, *, readonly: bool = True) -> memoryview:
    """``value``'s bytes in a buffer at ``offset`` bytes past a 64-byte boundary, read-only (as a view of a
    received message is) unless asked otherwise."""
    raw = np.frombuffer(value.numpy().tobytes(), np.uint8)
    backing = np.zeros(raw.nbytes + 128, np.uint8)
    start = (-backing.ctypes.data) % 64 + offset
    backing[start : start + raw.nbytes] = raw
    backing.flags.writeable = not readonly
    view = memoryview(backing)[start : start + raw.nbytes]  # type: ignore[arg-type]
    assert view.readonly == readonly and _address(view) % 64 == offset
    return view


VALUE = torch.arange(4096, dtype=F32)
HEAD = encode_wire(VALUE, "x").head


@pytest.mark.parametrize("offset", [0, 16, 32, 48])
def test_a_reader_gets_an_aligned_received_payload_in_place(offset: int) -> None:
    view = _received(VALUE, offset)
    assert decodes_in_place(HEAD, view, True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns about non-writable buffers: none may reach the hot path
        out = decode_wire(HEAD, view, share=True)
    assert _address(out) == _address(view) and torch.equal(out, VALUE)


@pytest.mark.parametrize("offset", [4, 8, 20])
def test_a_payload_below_the_sharing_alignment_is_copied(offset: int) -> None:
    assert offset % SHARE_ALIGNMENT
    view = _received(VALUE, offset)
    assert not decodes_in_place(HEAD, view, True)
    out = decode_wire(HEAD, view, share=True)
    assert _address(out) != _address(view) and _address(out) % 64 == 0 and torch.equal(out, VALUE)


def test_by_default_a_read_only_payload_is_copied_and_an_own_aligned_buffer_is_not() -> None:
    view = _received(VALUE, 0)
    out = decode_wire(HEAD, view)
    assert _address(out) != _address(view) and not decodes_in_place(HEAD, view, None)
    buffer = aligned_buffer(VALUE.numel() * 4)
    buffer[:] = memoryview(VALUE.numpy()).cast("B")  # type: ignore[arg-type]
    out = decode_wire(HEAD, buffer)
    assert _address(out) == _address(buffer)


def test_a_writer_gets_a_private_copy_and_the_senders_bytes_stay_as_they_were() -> None:
    for view in (_received(VALUE, 0), _received(VALUE, 0, readonly=False)):
        before = bytes(view)
        out = decode_wire(HEAD, view, share=False)
        assert _address(out) != _address(view) and not decodes_in_place(HEAD, view, False)
        out.add_(1.0)  # what a partition that writes its inputs does
        assert bytes(view) == before and torch.equal(out, VALUE + 1)


def test_a_codec_step_never_shares() -> None:
    from splitinfer.codecs import CodecSpec

    encoded = encode_wire(VALUE, "x", CodecSpec(lossless=tensor_pb2.LOSSLESS_CODEC_LZ4))
    view = memoryview(bytes(encoded.payload))
    assert not decodes_in_place(encoded.head, view, True)
    assert torch.equal(decode_wire(encoded.head, view, share=True), VALUE)


def test_a_shared_tensor_keeps_the_received_bytes_alive() -> None:
    view = _received(VALUE, 0)
    out = decode_wire(HEAD, view, share=True)
    del view
    import gc

    gc.collect()
    assert torch.equal(out, VALUE)


# Frames: payloads at aligned offsets, still the same protobuf messages

HEADER = model_server_pb2.RequestHeader(request_id="r1", timeout_ms=1000)


def _offset_in(message: bytes, payload: bytes | bytearray | memoryview) -> int:
    return _address(memoryview(payload)) - _address(memoryview(message))


@pytest.mark.parametrize("sizes", [[1 << 16], [1 << 20, 3 + (1 << 16)], [(1 << 21) - 40, 1 << 17, 5]])
def test_once_frames_put_large_payloads_at_aligned_offsets_and_parse_like_protobuf(sizes: list[int]) -> None:
    tensors = [encode_wire(torch.randn(n), f"t{i}") for i, n in enumerate(sizes)]
    data = frames.once_request(HEADER, tensors)
    parsed = frames.parse_once_request(data)
    stock = model_server_pb2.ProcessOnceRequest.FromString(data)  # any protobuf library reads the same message
    assert stock.header == HEADER
    for sent, ours, theirs in zip(tensors, parsed.tensors, stock.tensors, strict=True):
        payload = bytes(sent.payload)
        assert bytes(ours.payload) == payload == theirs.payload
        assert theirs.padding == bytes(len(theirs.padding))  # only zero bytes, which receivers ignore
        theirs.ClearField("payload")
        theirs.ClearField("padding")
        assert ours.head == theirs  # every other field alike
        if len(payload) >= frames.PAD_MIN_BYTES:
            assert _offset_in(data, ours.payload) % 16 == 0  # (the received bytes start 16-byte aligned)
    response = frames.once_response(parsed.tensors, model_server_pb2.ProcessDone())
    relayed = model_server_pb2.ProcessOnceResponse.FromString(response)
    assert [t.payload for t in relayed.tensors] == [bytes(t.payload) for t in tensors]
    for ours in frames.parse_once_response(response).tensors:
        if ours.nbytes >= frames.PAD_MIN_BYTES:
            assert _offset_in(response, ours.payload) % 16 == 0  # a relay pads afresh for its own layout


def test_a_message_padded_by_a_stock_serializer_reads_the_same() -> None:
    value = torch.randn(1 << 14)
    message = encode_wire(value, "x").head
    message.payload = value.numpy().tobytes()
    message.padding = bytes(9)  # protobuf writes it after the payload: still ignored
    request = model_server_pb2.ProcessOnceRequest(header=HEADER, tensors=[message]).SerializeToString()
    (tensor,) = frames.parse_once_request(request).tensors
    assert not tensor.head.padding and torch.equal(decode_wire(tensor.head, tensor.payload), value)


def test_a_single_message_stream_tensor_is_aligned_and_parses_like_protobuf() -> None:
    value = torch.randn(1 << 17)  # 512 KiB: one Tensor message with 1 MiB chunks
    (frame,) = frames.stream_frames([encode_wire(value, "x")], request=True)
    parsed = frames.parse_process_request(frame)
    assert parsed.kind == "tensor" and _offset_in(frame, parsed.value.payload) % 16 == 0
    stock = model_server_pb2.ProcessRequest.FromString(frame)
    assert stock.tensor.payload == value.numpy().tobytes() and stock.tensor.name == "x"


# Operators whose result may be an argument without their schema saying so


def _identity_like_calls() -> tuple[dict[str, Callable[[], Any]], tuple[torch.Tensor, ...]]:
    """A call of every allow-listed operator that declares no alias, with arguments where a shortcut returning
    the input itself would apply (add 0, mul 1, pow 1, 1x1 pools, same-size resampling, a one-tensor cat...)."""
    a = torch.ops.aten
    x, v = torch.randn(2, 3, 4, 4), torch.randn(4, 4)
    return {
        "aten.__and__.Tensor": lambda: a.__and__.Tensor(x > 0, x > 0),
        "aten._to_copy.default": lambda: a._to_copy.default(x),
        "aten._weight_int8pack_mm.default": lambda: a._weight_int8pack_mm.default(
            v, torch.randint(-8, 8, (4, 4), dtype=torch.int8), torch.ones(4)
        ),
        "aten.abs.default": lambda: a.abs.default(x),
        "aten.adaptive_avg_pool2d.default": lambda: a.adaptive_avg_pool2d.default(x, [4, 4]),
        "aten.add.Tensor": lambda: a.add.Tensor(x, 0),
        "aten.addmm.default": lambda: a.addmm.default(torch.zeros(4), v, torch.eye(4)),
        "aten.any.default": lambda: a.any.default(x > 0),
        "aten.arange.default": lambda: a.arange.default(4),
        "aten.avg_pool2d.default": lambda: a.avg_pool2d.default(x, [1, 1]),
        "aten.batch_norm.default": lambda: a.batch_norm.default(
            x, None, None, torch.zeros(3), torch.ones(3), False, 0.1, 1e-5, False
        ),
        "aten.cat.default": lambda: a.cat.default([x]),
        "aten.clamp.Tensor": lambda: a.clamp.Tensor(x, torch.tensor(-100.0)),
        "aten.clone.default": lambda: a.clone.default(x),
        "aten.conv2d.default": lambda: a.conv2d.default(x, torch.ones(3, 1, 1, 1), None, [1, 1], [0, 0], [1, 1], 3),
        "aten.cumsum.default": lambda: a.cumsum.default(x, 0),
        "aten.diff.default": lambda: a.diff.default(x, 0),
        "aten.div.Tensor": lambda: a.div.Tensor(x, 1),
        "aten.dropout.default": lambda: a.dropout.default(x, 0.5, False),
        "aten.embedding.default": lambda: a.embedding.default(v, torch.arange(4)),
        "aten.eq.Tensor": lambda: a.eq.Tensor(x, x),
        "aten.full_like.default": lambda: a.full_like.default(x, 1.0),
        "aten.gather.default": lambda: a.gather.default(v, 0, torch.zeros(4, 4, dtype=torch.long)),
        "aten.ge.Scalar": lambda: a.ge.Scalar(x, 0),
        "aten.gelu.default": lambda: a.gelu.default(x),
        "aten.gt.Scalar": lambda: a.gt.Scalar(x, 0),
        "aten.index.Tensor": lambda: a.index.Tensor(v, [torch.arange(4)]),
        "aten.isinf.default": lambda: a.isinf.default(x),
        "aten.layer_norm.default": lambda: a.layer_norm.default(x, [4]),
        "aten.le.Tensor": lambda: a.le.Tensor(x, x),
        "aten.linear.default": lambda: a.linear.default(v, torch.eye(4)),
        "aten.log.default": lambda: a.log.default(x),
        "aten.lt.Scalar": lambda: a.lt.Scalar(x, 0),
        "aten.max_pool2d.default": lambda: a.max_pool2d.default(x, [1, 1]),
        "aten.mean.dim": lambda: a.mean.dim(x, []),
        "aten.min.other": lambda: a.min.other(x, x),
        "aten.mul.Tensor": lambda: a.mul.Tensor(x, 1),
        "aten.ne.Scalar": lambda: a.ne.Scalar(x, 0),
        "aten.neg.default": lambda: a.neg.default(x),
        "aten.new_ones.default": lambda: a.new_ones.default(x, [2]),
        "aten.pow.Tensor_Scalar": lambda: a.pow.Tensor_Scalar(x, 1),
        "aten.relu.default": lambda: a.relu.default(x),
        "aten.rsqrt.default": lambda: a.rsqrt.default(x),
        "aten.scaled_dot_product_attention.default": lambda: a.scaled_dot_product_attention.default(x, x, x),
        "aten.sub.Tensor": lambda: a.sub.Tensor(x, 0),
        "aten.tanh.default": lambda: a.tanh.default(x),
        "aten.upsample_nearest2d.vec": lambda: a.upsample_nearest2d.vec(x, [4, 4], None),
        "aten.where.Scalar": lambda: a.where.Scalar(x > 0, 1.0, 0.0),
        "aten.where.ScalarOther": lambda: a.where.ScalarOther(x > 0, x, 0.0),
        "aten.where.self": lambda: a.where.self(torch.ones_like(x, dtype=torch.bool), x, x),
        "aten.zeros_like.default": lambda: a.zeros_like.default(x),
    }, (x, v)


def _storages(value: object) -> set[int]:
    if isinstance(value, torch.Tensor):
        return {value.untyped_storage().data_ptr()}
    if isinstance(value, list | tuple):
        return set().union(*(_storages(v) for v in value))
    return set()


def test_every_operator_without_a_declared_alias_returns_fresh_memory_or_is_listed() -> None:
    """input_effects trusts the schemas except for the operators it lists; a new allow-listed operator that
    declares no alias needs a case here (and a listing if its result can be its input)."""
    from splitinfer.program.interpreter import resolve_op
    from splitinfer.program.operators import ALLOWED_OPERATORS
    from splitinfer.runtime.aliasing import _UNDECLARED_ALIASES

    unannotated = {
        name
        for name in ALLOWED_OPERATORS
        if name != "getitem" and not any(arg.alias_info is not None for arg in resolve_op(name)._schema.arguments)  # type: ignore[attr-defined]
    }
    calls, inputs = _identity_like_calls()
    assert unannotated <= set(calls), f"no identity-like call for {sorted(unannotated - set(calls))}"
    given = _storages(inputs)
    with torch.inference_mode():
        aliasing = {name for name in unannotated if _storages(calls[name]()) & given}
    assert aliasing == set(_UNDECLARED_ALIASES)  # eval-mode dropout returns its input itself


def test_writes_and_aliases_the_schemas_do_not_declare_are_counted_by_argument_name() -> None:
    """Batch norm in training mode writes running_mean and running_var although its schema does not say so
    (checked here on the real operator), and eval dropout returns its input whether it is given by position
    or by keyword."""
    x, mean, var = torch.randn(2, 3, 4, 4), torch.zeros(3), torch.ones(3)
    before = mean.clone()
    torch.ops.aten.batch_norm.default(x, None, None, mean, var, True, 0.1, 1e-5, False)
    assert not torch.equal(mean, before)  # the fact the listing rests on
    norm = Node("y", "aten.batch_norm.default", (Ref("x"), None, None, Ref("m"), Ref("v"), True, 0.1, 1e-5, False),
                {}, (_spec("y"),))  # fmt: skip
    effects = input_effects(_program([norm], ["y"], inputs=("x", "m", "v")))
    assert effects.writes == {"m", "v"} and not effects.read_only
    by_keyword = Node("y", "aten.dropout.default", (), {"input": Ref("x"), "p": 0.5, "train": False}, (_spec("y"),))
    effects = input_effects(_program([by_keyword], ["y"]))
    assert effects.returns == {"x"} and not effects.read_only


# The one-torch-call views (decode of aligned bytes, encode's payload): same tensors, same bytes, same memory


def _aligned_received(data: bytes, offset: int) -> memoryview:
    """``data`` inside a read-only bytes object, at a 16-byte aligned ``offset`` from an aligned start when
    the allocator gives one (as a received message's payload)."""
    for pad in range(0, 64, 1):
        blob = b"\0" * pad + b"\0" * offset + data
        view = memoryview(blob)[pad + offset :]
        if np.frombuffer(view, dtype=np.uint8).ctypes.data % SHARE_ALIGNMENT == 0:
            return view
    raise AssertionError("no aligned placement found")


ONE_CALL_DTYPES = [torch.float32, torch.float64, torch.float16, torch.int8, torch.uint8, torch.int16, torch.int32,
                   torch.int64, torch.bool]  # fmt: skip


@pytest.mark.parametrize("dtype", [*ONE_CALL_DTYPES, torch.bfloat16])
@pytest.mark.parametrize("shape", [(), (1,), (3, 5), (1, 4, 2, 3)])
def test_shared_and_own_buffer_decodes_are_the_tensor_in_place(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    source = (torch.randn(shape) * 10).to(dtype)
    wire = encode_wire(source, "t")
    assert wire.payload.nbytes == source.numel() * source.element_size()  # type: ignore[union-attr]
    assert bytes(wire.payload) == source.contiguous().view(-1).view(torch.uint8).numpy().tobytes()
    received = _aligned_received(bytes(wire.payload), 16)
    shared = decode_wire(wire.head, received, share=True)
    assert shared.dtype == dtype and tuple(shared.shape) == shape and torch.equal(shared, source)
    assert shared.data_ptr() == np.frombuffer(received, dtype=np.uint8).ctypes.data  # no copy
    own = aligned_buffer(len(received))
    own[:] = received
    in_place = decode_wire(wire.head, own)  # a writable buffer of our own: in place, writable
    assert torch.equal(in_place, source) and in_place.data_ptr() == np.frombuffer(own, dtype=np.uint8).ctypes.data
    copied = decode_wire(wire.head, received, share=False)
    assert torch.equal(copied, source) and copied.data_ptr() != shared.data_ptr()


def test_a_shared_decode_of_bytes_that_disagree_with_the_shape_is_refused() -> None:
    wire = encode_wire(torch.arange(6, dtype=torch.float32).reshape(2, 3), "t")
    head = tensor_pb2.Tensor()
    head.CopyFrom(wire.head)
    del head.shape[:]
    head.shape.extend([4, 3])  # 48 bytes claimed, 24 carried (payload_size_bytes still says 24)
    with pytest.raises(InvalidArgument):
        decode_wire(head, _aligned_received(bytes(wire.payload), 16), share=True)


def test_encode_of_a_non_contiguous_or_empty_tensor_is_its_contiguous_bytes() -> None:
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    for tensor in (base.t(), base[:, 1:3], torch.empty(0, 4), torch.tensor(7.0)):
        wire = encode_wire(tensor, "t")
        assert bytes(wire.payload) == tensor.contiguous().numpy().tobytes()
        assert torch.equal(decode_wire(wire.head, wire.payload), tensor)
