"""The Open Inference Protocol front doors (gRPC and HTTP/REST), driven by the unmodified ``tritonclient``.

The client runs in its own process (as a user's would; it also registers the protocol's messages under its
own file name, which may not share a process with ours). Its outputs are compared with the whole model."""

from __future__ import annotations

import gzip
import importlib.util
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from splitinfer.errors import NotFound
from splitinfer.inference import grpc_service_pb2 as oip
from splitinfer.inference import grpc_service_pb2_grpc as oip_grpc
from tests.integration._system import MODEL, SmallSystem, small_system

ROOT = Path(__file__).resolve().parents[2]
# Looked up, not imported: its messages may not share this process with ours.
if importlib.util.find_spec("tritonclient") is None:
    pytest.fail("tritonclient[grpc] is a dev dependency; run make install")


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmallSystem]:
    with small_system(tmp_path_factory.mktemp("oip")) as running:
        yield running


def _triton(system: SmallSystem, tmp: Path, *extra: str, http: bool = False) -> tuple[dict, dict]:  # type: ignore[type-arg]
    x = tmp / "x.npy"
    np.save(x, system.example.numpy())
    out = tmp / "out.npz"
    url = f"127.0.0.1:{system.frontend.http_port}" if http else system.frontend.address
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "triton_client.py"), "--url", url, "--protocol",
         "http" if http else "grpc", "--model", MODEL, "--input", str(x), "--out", str(out), *extra],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), dict(np.load(out))


def test_tritonclient_runs_the_split_model(system: SmallSystem, tmp_path: Path) -> None:
    report, arrays = _triton(system, tmp_path, "--version", "fp32", "--stream", "3", "--request-id", "oip-1")
    assert report["live"] and report["ready"] and report["model_ready"]
    assert report["server"] == "splitinfer"
    assert sorted(report["versions"]) == ["fp32"]
    assert {(name, version, state) for name, version, state in report["repository"]} == {
        (MODEL, "fp16", "READY"),
        (MODEL, "fp32", "READY"),
    }
    assert report["ran_version"] == "fp32"
    assert report["streamed"] == 3
    assert report["unknown_model"] == "StatusCode.NOT_FOUND"
    assert report["inference_count"] >= 4
    with torch.no_grad():
        expected = system.model(system.example).numpy()
    np.testing.assert_allclose(arrays[system.output_name], expected, rtol=1e-4, atol=1e-5)
    for k in range(3):
        np.testing.assert_allclose(arrays[f"stream_{k}"], expected, rtol=1e-4, atol=1e-5)
    # Every request was stored, but the OIP id only correlates: it keys nothing unless dedup is asked for.
    assert system.frontend.store is not None
    with pytest.raises(NotFound):
        system.frontend.store.get("oip-1")
    _, arrays_again = _triton(system, tmp_path, "--version", "fp32", "--request-id", "oip-1")
    np.testing.assert_array_equal(arrays_again[system.output_name], arrays[system.output_name])


def _infer(system: SmallSystem, value: float, request_id: str, dedup: bool) -> oip.ModelInferResponse:
    request = oip.ModelInferRequest(model_name=MODEL, model_version="fp32", id=request_id)
    if dedup:
        request.parameters["dedup"].bool_param = True
    x = torch.full_like(system.example, value)
    request.inputs.add(name=system.input_name, datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.numpy().tobytes())
    with grpc.insecure_channel(system.frontend.address) as channel:
        return oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)


def test_an_oip_id_is_a_correlation_id_unless_dedup_is_asked(system: SmallSystem) -> None:
    assert system.frontend.store is not None
    before = system.frontend.store.count()
    one, two = _infer(system, 0.5, "app-7", dedup=False), _infer(system, 1.5, "app-7", dedup=False)
    assert one.id == two.id == "app-7"  # echoed
    assert one.raw_output_contents[0] != two.raw_output_contents[0]  # two requests, two answers
    assert system.frontend.store.count() == before + 2
    first = _infer(system, 0.5, "app-8", dedup=True)
    again = _infer(system, 0.5, "app-8", dedup=True)  # a retry: the stored result, not a second run
    assert again.raw_output_contents == first.raw_output_contents
    assert system.frontend.store.count() == before + 3
    with pytest.raises(grpc.RpcError) as refused:
        _infer(system, 2.5, "app-8", dedup=True)  # the same id for other inputs
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as long:
        _infer(system, 0.5, "i" * (4 << 20), dedup=True)
    assert long.value.code() == grpc.StatusCode.INVALID_ARGUMENT and len(long.value.details()) < 300


def test_planner_picks_a_version_when_none_is_named(system: SmallSystem, tmp_path: Path) -> None:
    report, arrays = _triton(system, tmp_path)
    assert report["ran_version"] in ("fp32", "fp16")
    with torch.no_grad():
        expected = system.model(system.example).numpy()
    np.testing.assert_allclose(arrays[system.output_name], expected, rtol=2e-2, atol=2e-2)


def _stub(system: SmallSystem) -> oip_grpc.GRPCInferenceServiceStub:
    return oip_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(system.frontend.address))


def _request(system: SmallSystem, **changes: object) -> oip.ModelInferRequest:
    x = system.example.numpy()
    request = oip.ModelInferRequest(model_name=MODEL, model_version="fp32")
    request.inputs.add(name=system.input_name, datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.tobytes())
    for key, value in changes.items():
        setattr(request, key, value)
    return request


@pytest.mark.parametrize(
    ("mutate", "code", "words"),
    [
        (lambda r: setattr(r, "model_name", "nope"), grpc.StatusCode.NOT_FOUND, "not in the pool"),
        (lambda r: setattr(r, "model_version", "int3"), grpc.StatusCode.NOT_FOUND, "no version"),
        (lambda r: setattr(r.inputs[0], "datatype", "INT64"), grpc.StatusCode.INVALID_ARGUMENT, "must be"),
        (lambda r: r.inputs[0].shape.append(2), grpc.StatusCode.INVALID_ARGUMENT, "must be"),
        (lambda r: setattr(r.inputs[0], "name", "y"), grpc.StatusCode.INVALID_ARGUMENT, "no input"),
        (lambda r: r.raw_input_contents.__setitem__(0, b"\0" * 12), grpc.StatusCode.INVALID_ARGUMENT, "bytes"),
        (lambda r: r.raw_input_contents.append(b""), grpc.StatusCode.INVALID_ARGUMENT, "pair up"),
        (lambda r: r.outputs.add(name="logits_2"), grpc.StatusCode.INVALID_ARGUMENT, "no outputs"),
    ],
)
def test_bad_requests_get_clear_errors(system: SmallSystem, mutate, code, words) -> None:  # type: ignore[no-untyped-def]
    request = _request(system)
    mutate(request)
    with pytest.raises(grpc.RpcError) as info:
        _stub(system).ModelInfer(request, timeout=30)
    assert info.value.code() == code
    assert words in info.value.details()


def test_typed_contents_and_unimplemented_rpcs(system: SmallSystem) -> None:
    x = system.example.numpy()
    request = oip.ModelInferRequest(model_name=MODEL, model_version="fp32")
    request.inputs.add(name=system.input_name, datatype="FP32", shape=list(x.shape)).contents.fp32_contents.extend(
        x.reshape(-1).tolist()
    )
    response = _stub(system).ModelInfer(request, timeout=30)
    got = np.frombuffer(response.raw_output_contents[0], dtype=np.float32).reshape(list(response.outputs[0].shape))
    with torch.no_grad():
        np.testing.assert_allclose(got, system.model(system.example).numpy(), rtol=1e-4, atol=1e-5)
    channel = grpc.insecure_channel(system.frontend.address)
    shared_memory = channel.unary_unary("/inference.GRPCInferenceService/SystemSharedMemoryStatus")
    with pytest.raises(grpc.RpcError) as info:
        shared_memory(b"", timeout=10)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize("http", [False, True], ids=["grpc", "http"])
def test_configuration_classification_statistics_and_repository(
    system: SmallSystem, tmp_path: Path, http: bool
) -> None:
    """What perf_analyzer, model_analyzer and Triton users read: the model configuration, the classification
    extension, requirement misses said in the response, statistics with Triton's durations, and the repository
    API deploying the model onto the nodes again; the same through both transports."""
    report, arrays = _triton(system, tmp_path, "--version", "fp32", "--classes", "3", "--reload", http=http)
    assert report["unknown_model_ready"] is False  # as Triton answers: not ready, not an error
    assert {"classification", "model_configuration", "model_repository", "statistics"} <= set(report["extensions"])
    config = report["config"]
    shape = list(system.example.shape)
    assert config["inputs"] == [[system.input_name, "TYPE_FP32", shape]] and config["max_batch_size"] == 0
    assert config["outputs"][0][1] == "TYPE_FP32"
    with torch.no_grad():
        expected = system.model(system.example).numpy().reshape(-1)
    ranked = [int(c.split(":")[1]) for c in report["classes"]]
    assert ranked == list(np.argsort(-expected)[:3])
    assert report["requirements_missed"] == "min_accuracy"  # 0.999 asked, the variant declares 0.9
    assert report["stat_versions"] and set(report["stat_versions"]) <= {"fp32", "fp16"}
    durations = report["durations_ns"]
    assert durations["success"] > 0 and durations["compute_infer"] > 0 and durations["queue"] > 0
    assert durations["compute_infer"] < durations["success"]
    assert report["batch_sizes"] == [1]
    assert report["ready_after_unload"] is False
    assert report["unknown_model"] in ("StatusCode.NOT_FOUND", "404")
    np.testing.assert_allclose(arrays[system.output_name].reshape(-1), expected, rtol=1e-4, atol=1e-5)
    if http:  # tritonclient.http with JSON tensors both ways, not the binary extension
        _, as_json = _triton(system, tmp_path, "--version", "fp32", "--json", http=True)
        np.testing.assert_allclose(as_json[system.output_name].reshape(-1), expected, rtol=1e-4, atol=1e-5)
    deadline = time.monotonic() + 10  # load_model deployed it again: the nodes report it within a refresh
    while not all(
        any(p.startswith(f"{MODEL}@fp32/") for p in r.partitions) for r in system.registry.servers().values()
    ):
        assert time.monotonic() < deadline, "the model was not deployed again"
        time.sleep(0.1)


def _http(system: SmallSystem, method: str, path: str, body: bytes | None = None,
          headers: dict[str, str] | None = None) -> tuple[int, bytes]:  # fmt: skip
    request = urllib.request.Request(
        f"http://127.0.0.1:{system.frontend.http_port}{path}", data=body, method=method, headers=headers or {}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_curl_level_json_requests(system: SmallSystem) -> None:
    """What a person types with curl: JSON tensors in, JSON tensors out, statuses as KServe defines them."""
    assert _http(system, "GET", "/v2/health/live")[0] == 200
    status, body = _http(system, "GET", f"/v2/models/{MODEL}")
    assert status == 200 and json.loads(body)["inputs"][0]["shape"] == list(system.example.shape)
    x = system.example.numpy()
    doc = {"inputs": [{"name": system.input_name, "shape": list(x.shape), "datatype": "FP32",
                       "data": x.tolist()}]}  # fmt: skip
    status, body = _http(system, "POST", f"/v2/models/{MODEL}/versions/fp32/infer", json.dumps(doc).encode(),
                         {"Content-Type": "application/json"})  # fmt: skip
    assert status == 200, body
    answer = json.loads(body)
    with torch.no_grad():
        expected = system.model(system.example).numpy()
    got = np.asarray(answer["outputs"][0]["data"], dtype=np.float32).reshape(answer["outputs"][0]["shape"])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    gzipped = gzip.compress(json.dumps(doc).encode())
    status, _ = _http(system, "POST", f"/v2/models/{MODEL}/versions/fp32/infer", gzipped,
                      {"Content-Encoding": "gzip"})  # fmt: skip
    assert status == 200


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "words"),
    [("GET", "/v2/models/nope", None, 404, "not in the pool"),
     ("GET", "/v2/models/" + "m" * 5000, None, 400, "model name"),
     ("POST", f"/v2/models/{MODEL}/infer", b"{not json", 400, "not valid JSON"),
     ("POST", f"/v2/models/{MODEL}/infer", b'{"inputs": [{"name": "input", "shape": [1], "datatype": "FP32",'
      b' "data": [1]}]}', 400, "must be"),
     ("POST", f"/v2/models/{MODEL}/infer", gzip.compress(b" " * (300 << 20)), 429, "limit"),
     ("POST", f"/v2/models/{MODEL}/infer", b"{}", 400, "inputs"),
     ("POST", "/v2/repository/models/nope/load", b"", 404, "not in the pool"),
     ("GET", f"/v2/models/{MODEL}/versions/int3/config", None, 404, "no version")],
)  # fmt: skip
def test_bad_http_requests_get_the_right_status_and_a_bounded_message(
    system: SmallSystem, method: str, path: str, body: bytes | None, status: int, words: str
) -> None:
    headers = {"Content-Encoding": "gzip"} if body and body[:2] == b"\x1f\x8b" else {}
    got, text = _http(system, method, path, body, headers)
    assert got == status, text[:300]
    message = json.loads(text)["error"]
    assert words in message and len(message) <= 1100
