"""The Open Inference Protocol front door, driven by the unmodified ``tritonclient[grpc]`` package.

The client runs in its own process (as a user's would; it also registers the protocol's messages under its
own file name, which may not share a process with ours). Its outputs are compared with the whole model."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
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


def _triton(system: SmallSystem, tmp: Path, *extra: str) -> tuple[dict, dict]:  # type: ignore[type-arg]
    x = tmp / "x.npy"
    np.save(x, system.example.numpy())
    out = tmp / "out.npz"
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "triton_client.py"), "--url", system.frontend.address,
         "--model", MODEL, "--input", str(x), "--out", str(out), *extra],
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
    model_config = channel.unary_unary("/inference.GRPCInferenceService/ModelConfig")
    with pytest.raises(grpc.RpcError) as info:
        model_config(b"", timeout=10)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
