"""Distributed tracing with OpenTelemetry: W3C ``traceparent`` on every hop, one span per step.

Each daemon calls :func:`configure` once at start. Tracing follows the standard OpenTelemetry environment
variables, so operators configure it as they do any other service:

- ``OTEL_TRACES_EXPORTER``: ``otlp`` (OTLP over gRPC to ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
  ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``), ``console``, or ``none``. Unset, tracing is on when an OTLP endpoint
  is set and off otherwise (nothing is exported to a collector nobody runs);
- ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES`` name the process (default: the daemon's role);
- ``OTEL_BSP_*`` tune batching; ``OTEL_SDK_DISABLED=true`` turns everything off.

With tracing off, every call here costs next to nothing (the API's no-op tracer). The trace context travels
in gRPC metadata as W3C ``traceparent``/``tracestate`` (:func:`inject`, :func:`extract`): the front-end's span
is the parent of the first node's step span, which is the parent of the next node's, and so on.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract as _extract
from opentelemetry.propagate import inject as _inject
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

__all__ = ["configure", "extract", "inject", "record_step", "span", "traced", "tracer"]

log = logging.getLogger("splitinfer.tracing")
_configured: TracerProvider | None = None
#: gRPC metadata keys are lower-case ASCII; these are the W3C trace-context headers.
TRACE_KEYS = ("traceparent", "tracestate")


def _exporter_kind() -> str:
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return "none"
    kind = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if kind:
        return kind.split(",")[0].strip()
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    return "otlp" if endpoint else "none"


def configure(service_name: str, *, processors: Sequence[SpanProcessor] = ()) -> TracerProvider | None:
    """Sets this process's tracer provider from the environment (see the module docstring), plus any extra
    ``processors`` (tests pass an in-memory exporter's). Returns the provider, or None when tracing is off.
    Calling it again keeps the first provider (OpenTelemetry allows one per process)."""
    global _configured
    if _configured is not None:
        for processor in processors:
            _configured.add_span_processor(processor)
        return _configured
    kind = _exporter_kind()
    if kind == "none" and not processors:
        return None
    resource = Resource.create({"service.name": service_name}).merge(OTELResourceDetector().detect())
    if os.environ.get("OTEL_SERVICE_NAME"):
        resource = resource.merge(Resource.create({"service.name": os.environ["OTEL_SERVICE_NAME"]}))
    provider = TracerProvider(resource=resource)
    if kind == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    elif kind == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    elif kind != "none":
        log.warning("OTEL_TRACES_EXPORTER=%r is not supported (otlp, console, none); exporting nothing", kind)
    for processor in processors:
        provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    _configured = provider
    log.info("tracing on for %s (exporter %s)", service_name, kind)
    return provider


def tracer() -> trace.Tracer:
    return trace.get_tracer("splitinfer")


def traced(metadata: Iterable[tuple[str, Any]] | None = None) -> bool:
    """Whether a request with this invocation metadata needs its spans: a tracer provider is set in this
    process (spans are recorded), or the caller sent a trace context (which must travel on to the next hop
    even when this process records nothing). False lets a hot path skip span bookkeeping entirely (a few
    tens of microseconds per request with the API's no-op tracer)."""
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return True
    return any(key in TRACE_KEYS for key, _ in metadata or ())


def inject(metadata: Iterable[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    """``metadata`` plus the current trace context (W3C headers), for an outgoing gRPC call."""
    carrier: dict[str, str] = {}
    _inject(carrier)
    kept = [(k, v) for k, v in metadata if k not in TRACE_KEYS]
    return kept + [(k, v) for k, v in carrier.items() if k in TRACE_KEYS]


def extract(metadata: Iterable[tuple[str, Any]] | None) -> otel_context.Context:
    """The trace context an incoming call carries (its invocation metadata); an empty one when none.
    Malformed headers are ignored, as the W3C spec asks."""
    carrier: dict[str, str] = {}
    for key, value in metadata or ():
        if key in TRACE_KEYS and isinstance(value, str) and len(value) <= 512:
            carrier[key] = value
    return _extract(carrier)


def record_step(name: str, durations_ms: Mapping[str, float], attributes: Mapping[str, Any] | None = None) -> None:
    """A finished child span of the current one for a step that just ended, ``durations_ms`` long in total
    (queue, decode, compute, encode: each also an attribute ``splitinfer.<part>_ms``)."""
    total_ns = int(sum(durations_ms.values()) * 1e6)
    end_ns = time.time_ns()
    clean = {k: v for k, v in (attributes or {}).items() if v is not None}
    clean.update({f"splitinfer.{part}_ms": value for part, value in durations_ms.items()})
    current = tracer().start_span(name, start_time=end_ns - total_ns, attributes=clean)
    current.end(end_time=end_ns)


@contextmanager
def span(
    name: str,
    *,
    parent: otel_context.Context | None = None,
    attributes: Mapping[str, Any] | None = None,
    kind: trace.SpanKind = trace.SpanKind.INTERNAL,
) -> Iterator[trace.Span]:
    """A span named ``name`` (child of ``parent`` when given, else of the current span), current inside the
    block; an exception marks it as an error and propagates."""
    clean = {k: v for k, v in (attributes or {}).items() if v is not None}
    with tracer().start_as_current_span(name, context=parent, kind=kind, attributes=clean) as current:
        yield current
