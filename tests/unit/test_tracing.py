"""Trace context on the wire: W3C headers injected into and extracted from gRPC metadata, parent links kept,
malformed headers ignored, and the environment deciding the exporter."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from splitinfer import tracing

EXPORTER = InMemorySpanExporter()
tracing.configure("test", processors=[SimpleSpanProcessor(EXPORTER)])


@pytest.fixture(autouse=True)
def _spans() -> None:
    EXPORTER.clear()


def test_a_span_started_from_extracted_metadata_is_a_child_of_the_sender() -> None:
    with tracing.span("front-end") as parent:
        metadata = tracing.inject([("authorization", "Bearer x"), ("traceparent", "stale")])
    keys = [k for k, _ in metadata]
    assert keys.count("traceparent") == 1 and "authorization" in keys
    with tracing.span("node step", parent=tracing.extract(metadata), attributes={"a": 1, "skip": None}):
        pass
    spans = {s.name: s for s in EXPORTER.get_finished_spans()}
    child, root = spans["node step"], spans["front-end"]
    assert child.context.trace_id == root.context.trace_id == parent.get_span_context().trace_id
    assert child.parent is not None and child.parent.span_id == root.context.span_id
    assert dict(child.attributes or {}) == {"a": 1}


@pytest.mark.parametrize(
    "metadata",
    [None, [], [("traceparent", "garbage")], [("traceparent", "00-" + "0" * 32 + "-" + "0" * 16 + "-01")],
     [("traceparent", "x" * 10_000)], [("traceparent", b"00-bytes")]],
)  # fmt: skip
def test_malformed_trace_headers_start_a_new_trace(metadata: list[tuple[str, object]] | None) -> None:
    with tracing.span("step", parent=tracing.extract(metadata)):
        pass
    (only,) = EXPORTER.get_finished_spans()
    assert only.parent is None and only.context.trace_id != 0


def test_an_error_marks_the_span() -> None:
    with pytest.raises(ValueError), tracing.span("step"):
        raise ValueError("boom")
    (only,) = EXPORTER.get_finished_spans()
    assert only.status.status_code == trace.StatusCode.ERROR


@pytest.mark.parametrize(
    ("env", "kind"),
    [({}, "none"), ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}, "otlp"),
     ({"OTEL_TRACES_EXPORTER": "console"}, "console"),
     ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, "none")],
)  # fmt: skip
def test_the_standard_environment_chooses_the_exporter(
    env: dict[str, str], kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                 "OTEL_SDK_DISABLED"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert tracing._exporter_kind() == kind


def test_traced_says_when_a_request_needs_its_spans() -> None:
    assert tracing.traced(None)  # this process has a provider (configured above)
    # Without one, only a caller's trace context (which must travel on) asks for span bookkeeping.
    import subprocess
    import sys

    code = (
        "from splitinfer import tracing;"
        "print(tracing.traced(None), tracing.traced([('authorization', 'x')]),"
        " tracing.traced([('traceparent', '00-' + '1' * 32 + '-' + '2' * 16 + '-01')]))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.split() == ["False", "False", "True"]
