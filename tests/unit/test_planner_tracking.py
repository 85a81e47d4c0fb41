"""The per-phase prediction error summary that `make demo` prints."""

from __future__ import annotations

import pytest

from splitinfer.planner.tracking import PredictionTracker


def test_settled_and_first_request_errors_per_phase() -> None:
    tracker = PredictionTracker()
    # Phase A: the model is new on the phone: its first request is not a "seen before" first request.
    for predicted, measured in ((10, 100), (80, 100), (95, 100), (105, 100)):
        tracker.record("A", "phone", "digits", predicted, measured)
    # Phase B: the model ran on the phone in A: its first request counts, at 40% off.
    for predicted, measured in ((140, 100), (90, 100), (112, 100), (100, 100), (80, 100)):
        tracker.record("B", "phone", "digits", predicted, measured)
    a, b = tracker.summary()
    assert a.phase == "A" and a.requests == 4 and a.first_median is None
    assert a.settled_median == pytest.approx(0.05) and a.settled_met
    assert b.first_median == pytest.approx(0.4) and b.first_met
    assert b.settled_median == pytest.approx(0.12) and b.settled_met
    assert b.worst == pytest.approx(0.4)


def test_misses_are_reported_and_nothing_measured_is_infinite() -> None:
    tracker = PredictionTracker()
    tracker.record("A", "jetson", "resnet18", 10, 100)
    tracker.record("B", "jetson", "resnet18", 400, 100)  # seen before, 300% off
    for _ in range(3):
        tracker.record("B", "jetson", "resnet18", 150, 100)
    assert tracker.record("B", "phone", "resnet18", 5, 0) == float("inf")
    summary = {s.phase: s for s in tracker.summary()}
    assert summary["A"].settled_median is None and summary["A"].settled_met is None
    assert summary["B"].first_met is False and summary["B"].settled_met is False
    assert tracker.request_index("B", "jetson", "resnet18") == 4
