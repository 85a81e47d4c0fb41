"""gRPC channel and server options, set explicitly everywhere."""

from __future__ import annotations

from concurrent import futures

import grpc

__all__ = ["MAX_MESSAGE_BYTES", "channel_options", "insecure_channel", "new_server"]

#: Largest single gRPC message. Tensors above DEFAULT_CHUNK_BYTES travel chunked, so this only bounds one chunk
#: plus headers; it is generous so that other clients sending whole tensors still work.
MAX_MESSAGE_BYTES = 64 << 20


def channel_options(max_message_bytes: int = MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
    ]


def insecure_channel(address: str, max_message_bytes: int = MAX_MESSAGE_BYTES) -> grpc.Channel:
    return grpc.insecure_channel(address, options=channel_options(max_message_bytes))


def new_server(max_workers: int, max_message_bytes: int = MAX_MESSAGE_BYTES) -> grpc.Server:
    return grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        options=channel_options(max_message_bytes),
        maximum_concurrent_rpcs=None,
    )
