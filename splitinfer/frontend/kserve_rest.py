"""The Open Inference Protocol over HTTP/REST (KServe v2), beside the gRPC front door.

``tritonclient.http``, ``curl`` and every KServe v2 REST tool talk to it. It is a translation layer only: each
HTTP request becomes the protocol's protobuf request, goes to the *same* ``GRPCInferenceService`` servicer the
gRPC front door serves (one request path: planning, dispatch, storage, statistics, errors), and the protobuf
response comes back as JSON, with tensors as JSON arrays or, with the binary tensor data extension, as raw
bytes after the JSON header (``Inference-Header-Content-Length``).

Routes (all under ``/v2``): ``health/live``, ``health/ready``, server metadata, ``models/{m}[/versions/{v}]``
(metadata), ``/ready``, ``/config``, ``/stats`` (also ``/v2/models/stats``), ``/infer`` (POST),
``repository/index`` (POST), ``repository/models/{m}/load|unload`` (POST).

Errors: the servicer's gRPC status becomes the HTTP status KServe and Triton use (NOT_FOUND 404,
INVALID_ARGUMENT and FAILED_PRECONDITION 400, UNAUTHENTICATED 401, PERMISSION_DENIED 403, RESOURCE_EXHAUSTED 429,
UNIMPLEMENTED 501, UNAVAILABLE 503, DEADLINE_EXCEEDED 504, anything else 500) with ``{"error": message}``.
Bodies are bounded (``max_body_bytes``) before they are read whole; JSON tensors are checked against their
shape and datatype; compressed bodies (gzip, deflate) are inflated with the same bound.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import threading
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import uvicorn
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from splitinfer.errors import InvalidArgument, ResourceExhausted, SplitInferError
from splitinfer.inference import grpc_service_pb2 as oip
from splitinfer.security.auth import TokenTable, authorize
from splitinfer.security.interceptor import identify
from splitinfer.transport.status import bounded, status_for

__all__ = ["HTTP_STATUS", "KServeRestConfig", "RunningRest", "build_app", "start_rest"]

log = logging.getLogger("splitinfer.frontend.rest")

#: gRPC status -> HTTP status, as KServe and Triton answer.
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}

#: KServe datatype -> numpy dtype for JSON tensors (BYTES travels only as binary data here).
NUMPY_DTYPE: dict[str, str] = {
    "BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
    "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64",
    "FP16": "float16", "FP32": "float32", "FP64": "float64",
}  # fmt: skip
HEADER_LENGTH = "Inference-Header-Content-Length"
SERVICE = oip.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


@dataclass(frozen=True)
class KServeRestConfig:
    host: str = "127.0.0.1"
    #: 0: any free port (read it back from :attr:`RunningRest.port`).
    port: int = 0
    #: HTTPS with this key and certificate (PEM files); empty: plain HTTP.
    tls_key_file: str = ""
    tls_cert_file: str = ""
    #: Largest request body accepted (compressed or not), bytes.
    max_body_bytes: int = 256 << 20
    #: Deadline of a request that names none (header ``timeout`` in seconds may lower it).
    default_timeout_s: float = 30.0
    #: Longest deadline a request may ask for.
    max_timeout_s: float = 300.0


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class _RestContext:
    """What the servicer uses of a gRPC context, for a call that came over HTTP."""

    def __init__(self, metadata: tuple[tuple[str, str], ...], timeout_s: float, peer: str) -> None:
        self._metadata = metadata
        self._deadline = time.monotonic() + timeout_s
        self._peer = peer
        self._code: grpc.StatusCode | None = None
        self._details = ""

    def abort(self, code: grpc.StatusCode, details: str = "") -> None:  # sync and `await context.abort(...)`
        self._code = code
        raise _Aborted(code, details)

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def time_remaining(self) -> float:
        return max(0.0, self._deadline - time.monotonic())

    def peer(self) -> str:
        return self._peer

    def is_active(self) -> bool:
        return self.time_remaining() > 0

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False  # an HTTP request has no cancellation signal to hook here

    def set_trailing_metadata(self, metadata: Any) -> None:
        pass

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}


Dispatch = Callable[[str, Message, _RestContext], Awaitable[Message]]


def servicer_dispatch(
    servicer: Any, loop: asyncio.AbstractEventLoop | None = None, tokens: TokenTable | None = None
) -> Dispatch:
    """Calls ``servicer``'s method by name: a coroutine method runs on ``loop`` (the gRPC server's loop, where
    its channels live), a plain method on a worker thread. With ``tokens`` (authentication on), the caller's
    bearer token is checked against the role the same gRPC method needs, as the gRPC door's interceptor does."""

    async def dispatch(method: str, request: Message, context: _RestContext) -> Message:
        if tokens is not None:
            authorize(f"/{SERVICE}/{method}", identify(tokens, context))  # type: ignore[arg-type]
        handler = getattr(servicer, method)
        if asyncio.iscoroutinefunction(handler):
            coroutine = handler(request, context)
            if loop is None or loop is asyncio.get_running_loop():
                result: Message = await coroutine
                return result
            return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, loop))
        return await run_in_threadpool(handler, request, context)

    return dispatch


# --- protobuf <-> JSON -------------------------------------------------------------------------------------


def message_json(message: Message) -> dict[str, Any]:
    """A protocol message as the REST API spells it: field names as in the proto, 64-bit integers as JSON
    numbers (proto3's JSON mapping would make them strings, which Triton's REST API does not), enums by
    name, unset fields left out."""
    out: dict[str, Any] = {}
    for field, value in message.ListFields():
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            out[field.name] = {k: _scalar(value_field, v) for k, v in value.items()}
        elif field.is_repeated:
            out[field.name] = [_scalar(field, v) for v in value]
        else:
            out[field.name] = _scalar(field, value)
    return out


def _scalar(field: FieldDescriptor, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return message_json(value)
    if field.type == FieldDescriptor.TYPE_ENUM and field.enum_type is not None:
        known = field.enum_type.values_by_number
        return known[value].name if value in known else value
    if field.type == FieldDescriptor.TYPE_BYTES:
        return base64.b64encode(value).decode()
    return value


def _parameters(raw: Any, where: str) -> dict[str, oip.InferParameter]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidArgument(f"{where}: parameters must be a JSON object")
    out = {}
    for key, value in raw.items():
        param = oip.InferParameter()
        if isinstance(value, bool):
            param.bool_param = value
        elif isinstance(value, int):
            if not -(2**63) <= value < 2**63:
                raise InvalidArgument(f"{where}: parameter {str(key)[:64]!r} is out of the int64 range")
            param.int64_param = value
        elif isinstance(value, float):
            param.double_param = value
        elif isinstance(value, str):
            param.string_param = value
        else:
            raise InvalidArgument(f"{where}: parameter {str(key)[:64]!r} must be a bool, number or string")
        out[str(key)] = param
    return out


def _parameter_json(param: oip.InferParameter) -> Any:
    choice = param.WhichOneof("parameter_choice")
    return getattr(param, choice) if choice else None


def _shape(raw: Any, where: str) -> list[int]:
    if not isinstance(raw, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in raw):
        raise InvalidArgument(f"{where}: shape must be a list of integers")
    if any(d < 0 or d >= 2**31 for d in raw) or len(raw) > 16:
        raise InvalidArgument(f"{where}: shape {raw[:17]} is out of range")
    return list(raw)


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def infer_request(body: bytes, header_length: int | None, model: str, version: str) -> oip.ModelInferRequest:
    """An HTTP infer body (JSON, optionally followed by binary tensor data) as a ModelInferRequest whose
    inputs all travel in ``raw_input_contents``."""
    split = len(body) if header_length is None else header_length
    if not 0 <= split <= len(body):
        raise InvalidArgument(f"{HEADER_LENGTH} {header_length} is outside the body ({len(body)} bytes)")
    try:
        doc = json.loads(body[:split])
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"the request is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list):
        raise InvalidArgument("an inference request is a JSON object with an 'inputs' list")
    request = oip.ModelInferRequest(model_name=model, model_version=version)
    if doc.get("id") is not None:
        if not isinstance(doc["id"], str):
            raise InvalidArgument("'id' must be a string")
        request.id = doc["id"]
    for key, value in _parameters(doc.get("parameters"), "request").items():
        request.parameters[key].CopyFrom(value)
    binary = memoryview(body)[split:]
    offset = 0
    for index, item in enumerate(doc["inputs"]):
        where = f"input {index}"
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidArgument(f"{where}: an input is an object with a 'name'")
        name, datatype = item["name"], item.get("datatype")
        if not isinstance(datatype, str):
            raise InvalidArgument(f"{where} ({name[:64]!r}): 'datatype' is required")
        shape = _shape(item.get("shape"), f"{where} ({name[:64]!r})")
        tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
        params = _parameters(item.get("parameters"), where)
        size_param = params.pop("binary_data_size", None)
        for key, value in params.items():
            tensor.parameters[key].CopyFrom(value)
        if size_param is not None:
            size = size_param.int64_param
            if size_param.WhichOneof("parameter_choice") != "int64_param" or size < 0 or offset + size > len(binary):
                raise InvalidArgument(f"{where} ({name[:64]!r}): binary_data_size {size} overruns the body")
            request.raw_input_contents.append(bytes(binary[offset : offset + size]))
            offset += size
            continue
        if "data" not in item:
            raise InvalidArgument(f"{where} ({name[:64]!r}): needs 'data' or the binary_data_size parameter")
        dtype = NUMPY_DTYPE.get(datatype)
        if dtype is None:
            raise InvalidArgument(f"{where} ({name[:64]!r}): datatype {datatype[:16]!r} cannot travel as JSON here")
        flat = _flatten(item["data"])
        if len(flat) != math.prod(shape):
            raise InvalidArgument(f"{where} ({name[:64]!r}): {len(flat)} values for shape {shape}")
        if not all(isinstance(v, (int, float, bool)) for v in flat):
            raise InvalidArgument(f"{where} ({name[:64]!r}): data must be numbers")
        try:
            array = np.asarray(flat, dtype=dtype)
        except (OverflowError, ValueError) as exc:
            raise InvalidArgument(f"{where} ({name[:64]!r}): {exc}") from None
        request.raw_input_contents.append(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
    if offset != len(binary):
        raise InvalidArgument(f"{len(binary) - offset} bytes of binary data follow the JSON that no input claims")
    outputs = doc.get("outputs") or []
    if not isinstance(outputs, list):
        raise InvalidArgument("'outputs' must be a list")
    for index, item in enumerate(outputs):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidArgument(f"output {index}: an output is an object with a 'name'")
        wanted = request.outputs.add(name=item["name"])
        for key, value in _parameters(item.get("parameters"), f"output {index}").items():
            wanted.parameters[key].CopyFrom(value)
    return request


def _wants_binary(request: oip.ModelInferRequest, name: str) -> bool:
    every = request.parameters.get("binary_data_output")
    if every is not None and every.bool_param:
        return True
    for wanted in request.outputs:
        if wanted.name == name and "binary_data" in wanted.parameters:
            return bool(wanted.parameters["binary_data"].bool_param)
    return False


def infer_response(request: oip.ModelInferRequest, response: oip.ModelInferResponse) -> Response:
    doc: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id:
        doc["id"] = response.id
    if response.parameters:
        doc["parameters"] = {k: _parameter_json(v) for k, v in response.parameters.items()}
    blobs: list[bytes] = []
    outputs = []
    for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=False):
        item: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        params = {k: _parameter_json(v) for k, v in tensor.parameters.items()}
        if _wants_binary(request, tensor.name) or tensor.datatype not in NUMPY_DTYPE:
            params["binary_data_size"] = len(raw)
            blobs.append(raw)
        else:
            item["data"] = np.frombuffer(raw, dtype=np.dtype(NUMPY_DTYPE[tensor.datatype]).newbyteorder("<")).tolist()
        if params:
            item["parameters"] = params
        outputs.append(item)
    doc["outputs"] = outputs
    header = json.dumps(doc, separators=(",", ":")).encode()
    if not blobs:
        return Response(header, media_type="application/json")
    return Response(
        b"".join([header, *blobs]),
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(header))},
    )


# --- the app -----------------------------------------------------------------------------------------------


def _error(code: grpc.StatusCode, message: str) -> JSONResponse:
    return JSONResponse({"error": bounded(message)}, status_code=HTTP_STATUS.get(code, 500))


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise ResourceExhausted(f"the request body ({declared[:20]} bytes) exceeds the {limit}-byte limit")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ResourceExhausted(f"the request body exceeds the {limit}-byte limit")
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding in ("gzip", "deflate"):
        inflater = zlib.decompressobj(zlib.MAX_WBITS | (16 if encoding == "gzip" else 0))
        try:
            body = inflater.decompress(body, limit + 1)
        except zlib.error as exc:
            raise InvalidArgument(f"the {encoding} body does not inflate: {exc}") from None
        if len(body) > limit or inflater.unconsumed_tail:
            raise ResourceExhausted(f"the inflated request body exceeds the {limit}-byte limit")
    elif encoding not in ("", "identity"):
        raise InvalidArgument(f"Content-Encoding {encoding[:32]!r} is not supported (gzip, deflate)")
    return body


def build_app(dispatch: Dispatch, config: KServeRestConfig = KServeRestConfig()) -> Starlette:
    """The REST API over ``dispatch`` (see :func:`servicer_dispatch`)."""

    def context_for(request: Request) -> _RestContext:
        metadata = tuple(
            (k.lower(), v)
            for k, v in request.headers.items()
            if k.lower() in ("authorization", "traceparent", "tracestate") or k.lower().startswith("x-")
        )
        timeout_s = config.default_timeout_s
        asked = request.headers.get("timeout") or request.query_params.get("timeout")
        if asked:
            try:
                value = float(asked)
            except ValueError:
                raise InvalidArgument(f"timeout {asked[:32]!r} is not a number of seconds") from None
            if not math.isfinite(value) or value <= 0:
                raise InvalidArgument(f"timeout must be a positive number of seconds, got {asked[:32]!r}")
            timeout_s = min(value, config.max_timeout_s)
        peer = f"ipv4:{request.client.host}:{request.client.port}" if request.client else "unknown"
        return _RestContext(metadata, timeout_s, peer)

    async def call(method: str, message: Message, request: Request) -> Message:
        return await dispatch(method, message, context_for(request))

    def guarded(
        handler: Callable[[Request], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except _Aborted as exc:
                return _error(exc.code, exc.details)
            except SplitInferError as exc:
                return _error(status_for(exc), str(exc))
            except NotImplementedError:  # what generated servicer bases raise for an RPC nobody implemented
                return _error(grpc.StatusCode.UNIMPLEMENTED, f"{request.url.path} is not implemented")
            except Exception:
                log.exception("REST %s %s failed", request.method, request.url.path)
                return _error(grpc.StatusCode.INTERNAL, "internal error; the server logged the cause")

        return endpoint

    def names(request: Request) -> tuple[str, str]:
        return request.path_params.get("model", ""), request.path_params.get("version", "")

    async def live(request: Request) -> Response:
        response = await call("ServerLive", oip.ServerLiveRequest(), request)
        return Response(status_code=200 if response.live else 400)  # type: ignore[attr-defined]

    async def ready(request: Request) -> Response:
        response = await call("ServerReady", oip.ServerReadyRequest(), request)
        return Response(status_code=200 if response.ready else 400)  # type: ignore[attr-defined]

    async def server_metadata(request: Request) -> Response:
        return JSONResponse(message_json(await call("ServerMetadata", oip.ServerMetadataRequest(), request)))

    async def model_metadata(request: Request) -> Response:
        model, version = names(request)
        response = await call("ModelMetadata", oip.ModelMetadataRequest(name=model, version=version), request)
        return JSONResponse(message_json(response))

    async def model_ready(request: Request) -> Response:
        model, version = names(request)
        response = await call("ModelReady", oip.ModelReadyRequest(name=model, version=version), request)
        return Response(status_code=200 if response.ready else 400)  # type: ignore[attr-defined]

    async def model_config(request: Request) -> Response:
        model, version = names(request)
        response = await call("ModelConfig", oip.ModelConfigRequest(name=model, version=version), request)
        return JSONResponse(message_json(response.config))  # type: ignore[attr-defined]

    async def model_stats(request: Request) -> Response:
        model, version = names(request)
        response = await call("ModelStatistics", oip.ModelStatisticsRequest(name=model, version=version), request)
        return JSONResponse(message_json(response) or {"model_stats": []})

    async def infer(request: Request) -> Response:
        model, version = names(request)
        body = await _body(request, config.max_body_bytes)
        header = request.headers.get(HEADER_LENGTH.lower())
        if header is not None and not header.isdigit():
            raise InvalidArgument(f"{HEADER_LENGTH} must be a byte count, got {header[:32]!r}")
        message = infer_request(body, int(header) if header is not None else None, model, version)
        response = await call("ModelInfer", message, request)
        return infer_response(message, response)  # type: ignore[arg-type]

    async def repository_index(request: Request) -> Response:
        body = await _body(request, 1 << 16)
        doc = json.loads(body) if body.strip() else {}
        ready_only = bool(doc.get("ready", False)) if isinstance(doc, dict) else False
        response = await call("RepositoryIndex", oip.RepositoryIndexRequest(ready=ready_only), request)
        return JSONResponse([message_json(m) for m in response.models])  # type: ignore[attr-defined]

    async def repository_load(request: Request) -> Response:
        model, _ = names(request)
        await call("RepositoryModelLoad", oip.RepositoryModelLoadRequest(model_name=model), request)
        return Response(status_code=200)

    async def repository_unload(request: Request) -> Response:
        model, _ = names(request)
        await call("RepositoryModelUnload", oip.RepositoryModelUnloadRequest(model_name=model), request)
        return Response(status_code=200)

    model_routes = []
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        model_routes += [
            Route(prefix, guarded(model_metadata), methods=["GET"]),
            Route(prefix + "/ready", guarded(model_ready), methods=["GET"]),
            Route(prefix + "/config", guarded(model_config), methods=["GET"]),
            Route(prefix + "/stats", guarded(model_stats), methods=["GET"]),
            Route(prefix + "/infer", guarded(infer), methods=["POST"]),
        ]
    routes = [
        Route("/v2/health/live", guarded(live), methods=["GET"]),
        Route("/v2/health/ready", guarded(ready), methods=["GET"]),
        Route("/v2", guarded(server_metadata), methods=["GET"]),
        Route("/v2/models/stats", guarded(model_stats), methods=["GET"]),
        Route("/v2/repository/index", guarded(repository_index), methods=["POST"]),
        Route("/v2/repository/models/{model}/load", guarded(repository_load), methods=["POST"]),
        Route("/v2/repository/models/{model}/unload", guarded(repository_unload), methods=["POST"]),
        *model_routes,
    ]
    return Starlette(routes=routes)


@dataclass
class RunningRest:
    server: uvicorn.Server
    thread: threading.Thread
    port: int

    def stop(self, timeout_s: float = 5.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout_s)


def start_rest(
    dispatch: Dispatch, config: KServeRestConfig = KServeRestConfig(), timeout_s: float = 10.0
) -> RunningRest:
    """Serves the REST API on its own thread and event loop; returns once it listens."""
    server = uvicorn.Server(
        uvicorn.Config(build_app(dispatch, config), host=config.host, port=config.port, log_level="warning",
                       lifespan="off", access_log=False, limit_concurrency=1024, timeout_keep_alive=30,
                       ssl_keyfile=config.tls_key_file or None, ssl_certfile=config.tls_cert_file or None)
    )  # fmt: skip
    thread = threading.Thread(target=server.run, name="kserve-rest", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise OSError(f"the REST front door did not start on {config.host}:{config.port}")
        time.sleep(0.01)
    port = next(s.getsockname()[1] for srv in server.servers for s in srv.sockets)
    log.info("KServe v2 REST serving at %s:%d", config.host, port)
    return RunningRest(server, thread, port)
