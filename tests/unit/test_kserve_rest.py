"""The KServe v2 REST translation: JSON and binary tensors to the protocol's protobuf and back, bounded and
checked, with the protocol's JSON spelling (64-bit integers as numbers, enums by name)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from splitinfer.errors import InvalidArgument
from splitinfer.frontend.kserve_rest import HEADER_LENGTH, infer_request, infer_response, message_json
from splitinfer.inference import grpc_service_pb2 as oip
from splitinfer.inference import model_config_pb2 as mc


def _body(doc: dict, *blobs: bytes) -> tuple[bytes, int | None]:
    header = json.dumps(doc).encode()
    return header + b"".join(blobs), (len(header) if blobs else None)


def test_metadata_and_config_use_the_protocol_json_spelling() -> None:
    meta = oip.ModelMetadataResponse(name="m", versions=["fp32"], platform="splitinfer")
    meta.inputs.add(name="x", datatype="FP32", shape=[1, 3, 2**40])
    assert message_json(meta) == {
        "name": "m", "versions": ["fp32"], "platform": "splitinfer",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3, 2**40]}],
    }  # fmt: skip
    config = mc.ModelConfig(name="m", max_batch_size=8)
    config.input.add(name="x", data_type=mc.TYPE_FP32, dims=[3, 8, 8])
    config.dynamic_batching.max_queue_delay_microseconds = 2000
    config.parameters["division"].string_value = "default"
    doc = message_json(config)
    assert doc["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [3, 8, 8]}]
    assert doc["dynamic_batching"] == {"max_queue_delay_microseconds": 2000}
    assert doc["parameters"] == {"division": {"string_value": "default"}} and doc["max_batch_size"] == 8


def test_json_tensors_become_raw_little_endian_bytes() -> None:
    body, split = _body(
        {"id": "r1", "parameters": {"dedup": True, "n": 3, "w": 0.5, "s": "x"},
         "inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3, 4.5]]},
                    {"name": "b", "shape": [3], "datatype": "BOOL", "data": [True, False, True]}],
         "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}
    )  # fmt: skip
    request = infer_request(body, split, "m", "fp32")
    assert request.model_name == "m" and request.model_version == "fp32" and request.id == "r1"
    assert request.parameters["dedup"].bool_param and request.parameters["n"].int64_param == 3
    assert request.parameters["w"].double_param == 0.5 and request.parameters["s"].string_param == "x"
    assert np.frombuffer(request.raw_input_contents[0], "<f4").tolist() == [1, 2, 3, 4.5]
    assert request.raw_input_contents[1] == b"\x01\x00\x01"
    assert request.outputs[0].name == "y" and request.outputs[0].parameters["binary_data"].bool_param


def test_binary_tensors_are_cut_from_the_body_by_their_sizes() -> None:
    x = np.arange(6, dtype="<f2").tobytes()
    y = np.arange(4, dtype="<i8").tobytes()
    body, split = _body(
        {"inputs": [{"name": "x", "shape": [6], "datatype": "FP16", "parameters": {"binary_data_size": len(x)}},
                    {"name": "y", "shape": [4], "datatype": "INT64", "parameters": {"binary_data_size": len(y)}}]},
        x, y,
    )  # fmt: skip
    request = infer_request(body, split, "m", "")
    assert list(request.raw_input_contents) == [x, y]
    assert "binary_data_size" not in request.inputs[0].parameters


@pytest.mark.parametrize(
    ("doc", "blob", "message"),
    [({"inputs": "x"}, b"", "inputs"),
     ({"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2]}]}, b"", "2 values for shape"),
     ({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": ["a", "b"]}]}, b"", "numbers"),
     ({"inputs": [{"name": "x", "shape": [-1], "datatype": "FP32", "data": []}]}, b"", "out of range"),
     ({"inputs": [{"name": "x", "shape": [1.5], "datatype": "FP32", "data": [1]}]}, b"", "integers"),
     ({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}, b"", "cannot travel as JSON"),
     ({"inputs": [{"name": "x", "shape": [1], "datatype": "INT8", "data": [1000]}]}, b"", "x"),
     ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]}, b"", "needs 'data'"),
     ({"inputs": [{"name": "x", "shape": [4], "datatype": "FP32",
                   "parameters": {"binary_data_size": 99}}]}, b"1234", "overruns"),
     ({"inputs": [{"name": "x", "shape": [1], "datatype": "INT8",
                   "parameters": {"binary_data_size": 1}}]}, b"12", "no input claims"),
     ({"inputs": [], "parameters": {"big": 2**70}}, b"", "int64 range"),
     ({"inputs": [], "parameters": {"obj": {}}}, b"", "bool, number or string")],
)  # fmt: skip
def test_lying_and_careless_requests_are_refused(doc: dict, blob: bytes, message: str) -> None:
    body, split = _body(doc, blob) if blob else _body(doc)
    with pytest.raises(InvalidArgument, match=message):
        infer_request(body, split, "m", "")


def test_a_header_length_outside_the_body_or_garbage_json_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="outside the body"):
        infer_request(b"{}", 10, "m", "")
    with pytest.raises(InvalidArgument, match="not valid JSON"):
        infer_request(b"\xff\xfe{", None, "m", "")


def test_responses_carry_json_or_binary_outputs_as_asked() -> None:
    asked = oip.ModelInferRequest()
    asked.outputs.add(name="bin").parameters["binary_data"].bool_param = True
    response = oip.ModelInferResponse(model_name="m", model_version="fp32", id="r1")
    response.outputs.add(name="json", datatype="FP32", shape=[2])
    response.outputs.add(name="bin", datatype="INT32", shape=[3])
    raw_bin = np.array([7, 8, 9], "<i4").tobytes()
    response.raw_output_contents.extend([np.array([0.5, 1.5], "<f4").tobytes(), raw_bin])
    reply = infer_response(asked, response)
    header_length = int(reply.headers[HEADER_LENGTH])
    doc = json.loads(reply.body[:header_length])
    assert doc["outputs"][0]["data"] == [0.5, 1.5]
    assert doc["outputs"][1]["parameters"] == {"binary_data_size": 12} and "data" not in doc["outputs"][1]
    assert reply.body[header_length:] == raw_bin
    plain = infer_response(oip.ModelInferRequest(), response)
    assert plain.media_type == "application/json" and json.loads(plain.body)["outputs"][1]["data"] == [7, 8, 9]
