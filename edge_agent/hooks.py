"""How emulation reaches the edge agent: a hook the agent calls, implemented outside the production code.

The agent itself never sleeps to pretend it is slower. Demos and tests that emulate a slower device or a
shaped link pass a :class:`DeviceHook` (``splitinfer.testbed.EmulatedDevice``); a real device runs with none.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["DeviceHook"]


class DeviceHook(Protocol):
    """Changes how the device behaves, for emulation only."""

    def after_run(self, partition: str, elapsed_s: float) -> None:
        """Called after each partition the device ran, which took ``elapsed_s``; may stretch it (sleep).
        The agent reports the time measured around the run and this call."""
        ...

    def before_send(self, nbytes: int) -> None:
        """Called before a request's ``nbytes`` of tensors go to the front-end; may take the time a slower
        link would (sleep)."""
        ...

    def reported_flops(self, measured: float) -> float:
        """The compute throughput the device reports, given what it measured."""
        ...
