"""Shared fixtures."""

from __future__ import annotations

import socket

import pytest


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refuses socket use: unit tests must not touch the network."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("unit tests must not open sockets; move this test to tests/integration")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "bind", refuse)
