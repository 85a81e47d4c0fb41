from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _unit_tests_have_no_network(no_network: None) -> None:
    """Every unit test runs with sockets refused."""
