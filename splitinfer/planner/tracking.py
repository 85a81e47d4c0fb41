"""Predicted against measured latency, request by request, and the per-phase error summary.

A *condition* is one (phase, device, model): the requests of a phase that one device makes for one model.
For each condition the tracker keeps the relative error |predicted - measured| / measured of every
request, and summarises a phase by

* the median error from the third request of each condition on (calibration has seen two runs by then;
  target <= 15%), and
* the median error of the *first* request of each condition whose model already ran on that device in an
  earlier phase (what calibration carried over; target <= 50%).

Used by ``make demo`` and the adaptation benchmark; pure bookkeeping, no services.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

__all__ = ["PhaseSummary", "PredictionTracker"]

SETTLED_FROM = 3
SETTLED_TARGET = 0.15
FIRST_TARGET = 0.50


@dataclass(frozen=True, slots=True)
class PhaseSummary:
    phase: str
    requests: int
    #: Median relative error from the third request of each condition on (None: no such request).
    settled_median: float | None
    #: Median relative error of first requests of models that ran on that device before (None: none).
    first_median: float | None
    worst: float

    @property
    def settled_met(self) -> bool | None:
        return None if self.settled_median is None else self.settled_median <= SETTLED_TARGET

    @property
    def first_met(self) -> bool | None:
        return None if self.first_median is None else self.first_median <= FIRST_TARGET


@dataclass
class PredictionTracker:
    _errors: dict[tuple[str, str, str], list[float]] = field(default_factory=dict)
    _first_known: dict[tuple[str, str, str], bool] = field(default_factory=dict)
    _seen: set[tuple[str, str]] = field(default_factory=set)
    _phases: list[str] = field(default_factory=list)

    def record(self, phase: str, device: str, model: str, predicted_ms: float, measured_ms: float) -> float:
        """Records one request; returns its relative error (inf when nothing was measured)."""
        key = (phase, device, model)
        if phase not in self._phases:
            self._phases.append(phase)
        if key not in self._errors:
            self._errors[key] = []
            self._first_known[key] = (device, model) in self._seen
        error = abs(predicted_ms - measured_ms) / measured_ms if measured_ms > 0 else float("inf")
        self._errors[key].append(error)
        self._seen.add((device, model))
        return error

    def request_index(self, phase: str, device: str, model: str) -> int:
        """How many requests of this condition were recorded so far."""
        return len(self._errors.get((phase, device, model), []))

    def summary(self) -> list[PhaseSummary]:
        out = []
        for phase in self._phases:
            keys = [k for k in self._errors if k[0] == phase]
            settled = [e for k in keys for e in self._errors[k][SETTLED_FROM - 1 :]]
            first = [self._errors[k][0] for k in keys if self._first_known[k]]
            every = [e for k in keys for e in self._errors[k]]
            out.append(
                PhaseSummary(
                    phase=phase,
                    requests=len(every),
                    settled_median=statistics.median(settled) if settled else None,
                    first_median=statistics.median(first) if first else None,
                    worst=max(every) if every else 0.0,
                )
            )
        return out
