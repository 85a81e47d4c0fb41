"""The Result Store: every request's results, durably, in SQLite (WAL mode), queryable with paging.

Idempotent by request id: storing a result whose request id is already stored keeps the first and reports
it. Retention keeps at most ``max_rows`` results and none older than ``max_age_s``, oldest first out.
Pages are newest first and continue from an opaque token (keyset paging: stable while results arrive).
"""

from __future__ import annotations

import base64
import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from splitinfer.errors import InvalidArgument, NotFound
from splitinfer.v1 import result_store_pb2

__all__ = ["ResultQuery", "ResultStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    request_id TEXT PRIMARY KEY,
    device_id TEXT NOT NULL,
    model TEXT NOT NULL,
    created_unix_ms INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS results_by_time ON results (created_unix_ms DESC, request_id DESC);
CREATE INDEX IF NOT EXISTS results_by_device ON results (device_id, created_unix_ms DESC);
CREATE INDEX IF NOT EXISTS results_by_model ON results (model, created_unix_ms DESC);
"""
MAX_PAGE = 1000


@dataclass(frozen=True, slots=True)
class ResultQuery:
    device_id: str = ""
    model: str = ""
    since_unix_ms: int = 0
    until_unix_ms: int = 0
    page_size: int = 100
    page_token: str = ""


class ResultStore:
    def __init__(self, path: Path, *, max_rows: int = 1_000_000, max_age_s: float = 0.0) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_rows = max_rows
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a stored result survives a crash of the machine
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def put(self, result: result_store_pb2.StoredResult) -> bool:
        """Stores ``result``; False when its request id was already stored (the stored one is kept)."""
        if not result.request_id:
            raise InvalidArgument("a result needs a request_id")
        stored = result_store_pb2.StoredResult()
        stored.CopyFrom(result)
        if not stored.created_unix_ms:
            stored.created_unix_ms = int(time.time() * 1000)
        with self._lock:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO results (request_id, device_id, model, created_unix_ms, body) "
                "VALUES (?, ?, ?, ?, ?)",
                (stored.request_id, stored.device_id, stored.model, stored.created_unix_ms, stored.SerializeToString()),
            )
            inserted = cursor.rowcount == 1
            if inserted:
                self._apply_retention()
        return inserted

    def _apply_retention(self) -> None:
        if self.max_age_s > 0:
            cutoff = int((time.time() - self.max_age_s) * 1000)
            self._db.execute("DELETE FROM results WHERE created_unix_ms < ?", (cutoff,))
        (count,) = self._db.execute("SELECT COUNT(*) FROM results").fetchone()
        if count > self.max_rows:
            self._db.execute(
                "DELETE FROM results WHERE request_id IN (SELECT request_id FROM results "
                "ORDER BY created_unix_ms ASC, request_id ASC LIMIT ?)",
                (count - self.max_rows,),
            )

    def get(self, request_id: str) -> result_store_pb2.StoredResult:
        with self._lock:
            row = self._db.execute("SELECT body FROM results WHERE request_id = ?", (request_id,)).fetchone()
        if row is None:
            raise NotFound(f"no result stored for request {request_id!r}")
        return result_store_pb2.StoredResult.FromString(row[0])

    def query(self, q: ResultQuery) -> tuple[list[result_store_pb2.StoredResult], str]:
        """Matching results, newest first, and the token of the next page ("" when this is the last)."""
        if q.page_size < 0 or (q.until_unix_ms and q.since_unix_ms > q.until_unix_ms):
            raise InvalidArgument("page_size must be >= 0 and since_unix_ms <= until_unix_ms")
        size = min(q.page_size or 100, MAX_PAGE)
        clauses: list[str] = []
        args: list[str | int] = []
        if q.device_id:
            clauses.append("device_id = ?")
            args.append(q.device_id)
        if q.model:
            clauses.append("model = ?")
            args.append(q.model)
        if q.since_unix_ms:
            clauses.append("created_unix_ms >= ?")
            args.append(q.since_unix_ms)
        if q.until_unix_ms:
            clauses.append("created_unix_ms < ?")
            args.append(q.until_unix_ms)
        if q.page_token:
            created, request_id = _decode_token(q.page_token)
            clauses.append("(created_unix_ms < ? OR (created_unix_ms = ? AND request_id < ?))")
            args += [created, created, request_id]
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT body FROM results {where} ORDER BY created_unix_ms DESC, request_id DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(sql, (*args, size + 1)).fetchall()
        results = [result_store_pb2.StoredResult.FromString(r[0]) for r in rows[:size]]
        token = _encode_token(results[-1]) if len(rows) > size else ""
        return results, token

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM results").fetchone()[0])


def _encode_token(last: result_store_pb2.StoredResult) -> str:
    return base64.urlsafe_b64encode(json.dumps([last.created_unix_ms, last.request_id]).encode()).decode()


def _decode_token(token: str) -> tuple[int, str]:
    try:
        created, request_id = json.loads(base64.urlsafe_b64decode(token.encode()))
        return int(created), str(request_id)
    except (ValueError, TypeError) as exc:
        raise InvalidArgument(f"page_token {token!r} is not one this store issued") from exc
