"""Detections as structured records: one row per box a detector found, with the request it came from.

A stored result whose model ends in a detection post-processing stage carries its boxes
(``StoredResult.detections``); :meth:`DetectionStore.add` writes one record per box (box, label, label id,
score, request id, caller, device, model, variant, time) into its own table of the results database.
Queries filter by label, minimum score, time window, model, device and caller, newest first (best first
within a result), with keyset paging through an opaque token that the store validates strictly.
Adding the boxes of one (caller, request id) twice keeps the first set (retries store nothing new).
"""

from __future__ import annotations

import base64
import json
import math
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from splitinfer.errors import InvalidArgument
from splitinfer.results.keys import decode_token_list
from splitinfer.v1 import result_store_pb2

__all__ = ["MAX_DETECTIONS_PER_RESULT", "DetectionQuery", "DetectionStore", "detection_rows", "detections_to_proto"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS detections (
    caller TEXT NOT NULL,
    request_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    device_id TEXT NOT NULL,
    model TEXT NOT NULL,
    variant TEXT NOT NULL,
    created_unix_ms INTEGER NOT NULL,
    label TEXT NOT NULL,
    label_id INTEGER NOT NULL,
    score REAL NOT NULL,
    x_min REAL NOT NULL,
    y_min REAL NOT NULL,
    x_max REAL NOT NULL,
    y_max REAL NOT NULL,
    PRIMARY KEY (caller, request_id, idx)
);
CREATE INDEX IF NOT EXISTS detections_by_time ON detections (created_unix_ms DESC, caller, request_id, idx);
CREATE INDEX IF NOT EXISTS detections_by_label ON detections (label, created_unix_ms DESC);
"""
MAX_PAGE = 1000
#: A result carries at most this many boxes (a detector's post-processing caps its own output far lower).
MAX_DETECTIONS_PER_RESULT = 1000
_MAX_TOKEN_CHARS = 512
_MAX_TEXT = 128
_MAX_INT64 = (1 << 63) - 1


@dataclass(frozen=True, slots=True)
class DetectionQuery:
    label: str = ""
    min_score: float = 0.0
    since_unix_ms: int = 0
    until_unix_ms: int = 0
    model: str = ""
    device_id: str = ""
    caller: str = ""
    page_size: int = 100
    page_token: str = ""


def _text(value: str, what: str) -> str:
    if len(value.encode("utf-8", "surrogatepass")) > _MAX_TEXT or not value.isprintable():
        raise InvalidArgument(f"{what} must be printable text of at most {_MAX_TEXT} bytes")
    return value


def detections_to_proto(boxes: Sequence[object]) -> list[result_store_pb2.Detection]:
    """``Detection`` messages of :class:`splitinfer.detection.Box` objects (anything with their fields)."""
    return [
        result_store_pb2.Detection(
            x_min=b.x_min, y_min=b.y_min, x_max=b.x_max, y_max=b.y_max,  # type: ignore[attr-defined]
            label=b.label, label_id=b.label_id, score=b.score,  # type: ignore[attr-defined]
        )
        for b in boxes
    ]  # fmt: skip


def detection_rows(result: result_store_pb2.StoredResult) -> list[tuple[object, ...]]:
    """The table rows of ``result``'s boxes; InvalidArgument for a box that is not a box (check this before
    storing the result, so that a refused result leaves nothing behind)."""
    boxes = list(result.detections)
    if not boxes:
        return []
    if len(boxes) > MAX_DETECTIONS_PER_RESULT:
        raise InvalidArgument(f"a result carries {len(boxes)} detections; at most {MAX_DETECTIONS_PER_RESULT}")
    for what, value in (("request_id", result.request_id), ("caller", result.caller)):
        _text(value, what)
    rows: list[tuple[object, ...]] = []
    for i, d in enumerate(boxes):
        values = (d.x_min, d.y_min, d.x_max, d.y_max, d.score)
        if not all(math.isfinite(v) for v in values) or not 0.0 <= d.score <= 1.0:
            raise InvalidArgument(f"detection {i}: coordinates must be finite and the score in [0, 1]")
        if d.x_max < d.x_min or d.y_max < d.y_min:
            raise InvalidArgument(f"detection {i}: x_max/y_max must not be below x_min/y_min")
        _text(d.label, "a detection's label")
        rows.append(
            (result.caller, result.request_id, i, result.device_id, result.model, result.variant,
             result.created_unix_ms, d.label, d.label_id, d.score, d.x_min, d.y_min, d.x_max, d.y_max)
        )  # fmt: skip
    return rows


class DetectionStore:
    """The detections table, in the results database (its own connection; SQLite WAL allows several)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(self, result: result_store_pb2.StoredResult) -> int:
        """Writes a record per box of ``result``; returns how many were written (0 when that caller's
        request already has its boxes stored). InvalidArgument for a box that is not a box."""
        rows = detection_rows(result)
        if not rows:
            return 0
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                exists = self._db.execute(
                    "SELECT 1 FROM detections WHERE caller = ? AND request_id = ? LIMIT 1",
                    (result.caller, result.request_id),
                ).fetchone()
                if exists is None:
                    self._db.executemany(f"INSERT INTO detections VALUES ({', '.join('?' * 14)})", rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return 0 if exists is not None else len(rows)

    def query(self, q: DetectionQuery) -> tuple[list[result_store_pb2.DetectionRecord], str]:
        """Matching detections, newest first, and the next page's token ("" on the last page)."""
        if not (math.isfinite(q.min_score) and 0.0 <= q.min_score <= 1.0):
            raise InvalidArgument("min_score must be between 0 and 1")
        if q.page_size < 0:
            raise InvalidArgument("page_size must be >= 0")
        for bound in (q.since_unix_ms, q.until_unix_ms):
            if not 0 <= bound <= _MAX_INT64:
                raise InvalidArgument("since_unix_ms and until_unix_ms must be between 0 and 2^63-1")
        if q.until_unix_ms and q.since_unix_ms > q.until_unix_ms:
            raise InvalidArgument("since_unix_ms must not be after until_unix_ms")
        clauses: list[str] = []
        args: list[object] = []
        for column, value in (("label", q.label), ("model", q.model), ("device_id", q.device_id), ("caller", q.caller)):
            if value:
                clauses.append(f"{column} = ?")
                args.append(_text(value, column))
        if q.min_score > 0:
            clauses.append("score >= ?")
            args.append(q.min_score)
        if q.since_unix_ms:
            clauses.append("created_unix_ms >= ?")
            args.append(q.since_unix_ms)
        if q.until_unix_ms:
            clauses.append("created_unix_ms < ?")
            args.append(q.until_unix_ms)
        if q.page_token:
            created, caller, request_id, idx = _decode_token(q.page_token)
            clauses.append(
                "(created_unix_ms < ? OR (created_unix_ms = ? AND (caller > ? OR (caller = ? AND "
                "(request_id > ? OR (request_id = ? AND idx > ?))))))"
            )
            args += [created, created, caller, caller, request_id, request_id, idx]
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        size = min(q.page_size or 100, MAX_PAGE)
        sql = (
            "SELECT caller, request_id, idx, device_id, model, variant, created_unix_ms, label, label_id, score, "
            f"x_min, y_min, x_max, y_max FROM detections {where} "
            "ORDER BY created_unix_ms DESC, caller ASC, request_id ASC, idx ASC LIMIT ?"
        )
        with self._lock:
            rows = self._db.execute(sql, (*args, size + 1)).fetchall()
        more = len(rows) > size
        records = []
        for row in rows[:size]:
            caller, request_id, _idx, device_id, model, variant, created, label, label_id, score, *box = row
            records.append(
                result_store_pb2.DetectionRecord(
                    request_id=request_id, caller=caller, device_id=device_id, model=model, variant=variant,
                    created_unix_ms=created,
                    detection=result_store_pb2.Detection(
                        x_min=box[0], y_min=box[1], x_max=box[2], y_max=box[3], label=label, label_id=label_id,
                        score=score,
                    ),
                )
            )  # fmt: skip
        token = _encode_token(rows[size - 1]) if more else ""
        return records, token

    def prune(self) -> int:
        """Deletes the records of results no longer stored (retention removed them); returns how many."""
        with self._lock:
            cursor = self._db.execute(
                "DELETE FROM detections WHERE NOT EXISTS (SELECT 1 FROM results r "
                "WHERE r.caller = detections.caller AND r.request_id = detections.request_id)"
            )
        return int(cursor.rowcount)

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM detections").fetchone()[0])


def _encode_token(row: Sequence[object]) -> str:
    caller, request_id, idx, created = row[0], row[1], row[2], row[6]
    return base64.urlsafe_b64encode(json.dumps([created, caller, request_id, idx]).encode()).decode()


def _decode_token(token: str) -> tuple[int, str, str, int]:
    refused = InvalidArgument("page_token is not one this store issued")
    created, caller, request_id, idx = decode_token_list(token, 4, _MAX_TOKEN_CHARS, refused)
    if type(created) is not int or type(idx) is not int or not 0 <= created <= _MAX_INT64 or not 0 <= idx < 1 << 31:
        raise refused
    if not (isinstance(caller, str) and isinstance(request_id, str)):
        raise refused
    if len(caller) > _MAX_TEXT or len(request_id) > _MAX_TEXT:
        raise refused
    return created, caller, request_id, idx
