"""The Result Store: every request's results, durably, in SQLite (WAL mode), queryable with paging.

Results belong to their caller: the key is (caller, request id). Storing a result whose key is already
stored keeps the first and reports it; storing one with other inputs (another input digest) under a stored
key is refused. Ids are bounded when written (:mod:`splitinfer.results.keys`). Retention keeps at most
``max_rows`` results and none older than ``max_age_s``, oldest first out.
Pages are newest first and continue from an opaque token (keyset paging: stable while results arrive).
"""

from __future__ import annotations

import base64
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from splitinfer.errors import FailedPrecondition, InvalidArgument, NotFound, SplitInferError, Unavailable
from splitinfer.results.commit import GroupCommit
from splitinfer.results.detections import DetectionStore, detection_rows
from splitinfer.results.keys import check_id, decode_token_list, shown
from splitinfer.v1 import result_store_pb2

__all__ = ["ResultQuery", "ResultStore"]

log = logging.getLogger("splitinfer.results")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    caller TEXT NOT NULL,
    request_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    model TEXT NOT NULL,
    created_unix_ms INTEGER NOT NULL,
    input_digest TEXT NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (caller, request_id)
);
CREATE INDEX IF NOT EXISTS results_by_time ON results (created_unix_ms DESC, caller DESC, request_id DESC);
CREATE INDEX IF NOT EXISTS results_by_device ON results (device_id, created_unix_ms DESC);
CREATE INDEX IF NOT EXISTS results_by_model ON results (model, created_unix_ms DESC);
CREATE INDEX IF NOT EXISTS results_by_caller ON results (caller, created_unix_ms DESC);
"""
#: The schema above; databases written before results had callers (version 0) are migrated on open.
_SCHEMA_VERSION = 2
MAX_PAGE = 1000
#: A page of QueryResults stays below this many bytes of results, so that it fits the 4 MiB a default
#: gRPC client accepts; a single result larger than this comes alone, without its outputs.
MAX_PAGE_BYTES = 3 << 20
#: Longest page token accepted (the tokens this store issues are far shorter).
MAX_TOKEN_CHARS = 1024
_MAX_INT64 = (1 << 63) - 1
#: Retention recounts the stored rows every this many puts (another process may write the same file).
RECOUNT_EVERY = 1024


@dataclass(frozen=True, slots=True)
class ResultQuery:
    device_id: str = ""
    model: str = ""
    since_unix_ms: int = 0
    until_unix_ms: int = 0
    page_size: int = 100
    page_token: str = ""
    caller: str = ""


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
        self._migrate()
        self._db.executescript(_SCHEMA)
        self._db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        #: Rows stored, kept here so that retention does not count the table on every put (COUNT(*) scans
        #: an index: 1.2 ms per put at 100k rows); recounted every ``RECOUNT_EVERY`` puts, for writers in
        #: other processes.
        self._rows = self._count_rows()
        self._puts = 0
        #: :meth:`get` reads through a connection of its thread's own, without the writer's lock: in WAL
        #: mode a read never waits for a put's commit (fsync), so an event loop may look results up itself.
        self._readers = threading.local()
        self._reader_connections: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        #: The boxes of detection results, one record per box (splitinfer.results.detections).
        self.detections = DetectionStore(path)
        #: Puts from event loops (the front-end's requests, the ResultStoreService), committed in groups.
        self.commits = GroupCommit(self)

    def _migrate(self) -> None:
        """A database from before callers: results keyed by request id alone. Each becomes its device's."""
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(results)")}
        if version >= _SCHEMA_VERSION or not columns or "caller" in columns:
            return
        self._db.executescript(
            "BEGIN; ALTER TABLE results RENAME TO results_v1;"
            " DROP INDEX IF EXISTS results_by_time; DROP INDEX IF EXISTS results_by_device;"
            " DROP INDEX IF EXISTS results_by_model;"
            + _SCHEMA
            + " INSERT INTO results (caller, request_id, device_id, model, created_unix_ms, input_digest, body)"
            " SELECT device_id, request_id, device_id, model, created_unix_ms, '', body FROM results_v1;"
            " DROP TABLE results_v1; COMMIT;"
        )

    def close(self) -> None:
        """Commits every put the group commit accepted, then closes the database."""
        self.commits.close()
        with self._lock:
            self._db.close()
        with self._readers_lock:
            for reader in self._reader_connections:
                reader.close()
            self._reader_connections.clear()
        self.detections.close()

    def put(self, result: result_store_pb2.StoredResult) -> bool:
        """Stores ``result``; False when its (caller, request id) was already stored (the stored one is kept)."""
        return self.put_or_get(result)[0]

    def put_or_get(self, result: result_store_pb2.StoredResult) -> tuple[bool, result_store_pb2.StoredResult]:
        """Stores ``result`` unless its key is taken; returns whether it was stored and the result now stored
        under its key. Raises FailedPrecondition when the stored one answered other inputs."""
        outcome = self.put_many([result])[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def put_many(
        self, results: Sequence[result_store_pb2.StoredResult]
    ) -> list[tuple[bool, result_store_pb2.StoredResult] | SplitInferError]:
        """:meth:`put_or_get` for each of ``results``, in one transaction (one commit, one WAL sync, for the
        lot: a group commit), each answered on its own: whether it was stored and the result now under its
        key, or the error that refused it (a malformed id or box is refused before anything is written; a
        key stored with other inputs is FailedPrecondition). Every answer holds once this returns: the
        results stored are committed (``synchronous=FULL``). Two results of one key: the first is stored and
        the second answered like a retry of it."""
        answers: list[tuple[bool, result_store_pb2.StoredResult] | SplitInferError | None] = [None] * len(results)
        rows: list[tuple[int, result_store_pb2.StoredResult]] = []
        for index, result in enumerate(results):
            try:
                check_id(result.request_id, "a result's request_id")
                check_id(result.caller, "a result's caller", required=False)
                check_id(result.device_id, "a result's device_id", required=False)
                check_id(result.model, "a result's model", required=False)
                detection_rows(result)  # refuse malformed boxes before anything is written
            except SplitInferError as exc:
                answers[index] = exc
                continue
            stored = result_store_pb2.StoredResult()
            stored.CopyFrom(result)
            stored.outputs_omitted = False
            if not stored.created_unix_ms:
                stored.created_unix_ms = int(time.time() * 1000)
            rows.append((index, stored))
        inserted: list[tuple[int, result_store_pb2.StoredResult]] = []
        taken: list[tuple[int, result_store_pb2.StoredResult]] = []
        kept_rows: list[tuple[bytes]] = []
        pruned = False
        if rows:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    for index, stored in rows:
                        cursor = self._db.execute(
                            "INSERT OR IGNORE INTO results"
                            " (caller, request_id, device_id, model, created_unix_ms, input_digest, body)"
                            " VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (
                                stored.caller,
                                stored.request_id,
                                stored.device_id,
                                stored.model,
                                stored.created_unix_ms,
                                stored.input_digest,
                                stored.SerializeToString(),
                            ),
                        )
                        if cursor.rowcount == 1:
                            inserted.append((index, stored))
                            pruned = self._apply_retention() or pruned
                        else:
                            # Read now: retention run by a later insert of this group may delete it.
                            row = self._db.execute(
                                "SELECT body FROM results WHERE caller = ? AND request_id = ?",
                                (stored.caller, stored.request_id),
                            ).fetchone()
                            taken.append((index, stored))
                            kept_rows.append(row)
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    self._rows = self._count_rows()  # the rolled-back inserts counted themselves
                    raise
        for index, stored in inserted:
            answers[index] = self._add_detections(stored)
        if pruned:
            self.detections.prune()
        for (index, stored), row in zip(taken, kept_rows, strict=True):
            kept = result_store_pb2.StoredResult.FromString(row[0])
            if kept.input_digest and stored.input_digest and kept.input_digest != stored.input_digest:
                answers[index] = FailedPrecondition(
                    f"request id {shown(stored.request_id)} was already used for other inputs; "
                    "use a new id for a new request"
                )
            else:
                # A retry writes the boxes a failed first try could not (DetectionStore.add skips stored ones).
                repaired = self._add_detections(kept)
                answers[index] = (False, kept) if isinstance(repaired, tuple) else repaired
        done = [a for a in answers if a is not None]
        assert len(done) == len(results)  # every result answered, in order
        return done

    def _add_detections(
        self, stored: result_store_pb2.StoredResult
    ) -> tuple[bool, result_store_pb2.StoredResult] | SplitInferError:
        """Writes a committed result's boxes; a failure answers that result alone (its caller retries, and
        the retry writes them), never the others of its group."""
        try:
            self.detections.add(stored)
        except sqlite3.Error as exc:
            log.warning("detections of request %s not stored: %s", shown(stored.request_id), exc)
            return Unavailable(f"the detections of request {shown(stored.request_id)} were not stored; retry it")
        return True, stored

    def _reader(self) -> sqlite3.Connection:
        reader: sqlite3.Connection | None = getattr(self._readers, "connection", None)
        if reader is None:
            # Used by this thread only; closed by close() from any thread.
            reader = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
            reader.execute("PRAGMA query_only=ON")
            self._readers.connection = reader
            with self._readers_lock:
                self._reader_connections.append(reader)
        return reader

    def _count_rows(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM results").fetchone()[0])

    def _apply_retention(self) -> bool:
        """After an insert (under the lock): deletes results past retention; True when any was deleted
        (their detections go with them)."""
        self._puts += 1
        self._rows = self._count_rows() if self._puts % RECOUNT_EVERY == 0 else self._rows + 1
        deleted = 0
        if self.max_age_s > 0:
            cutoff = int((time.time() - self.max_age_s) * 1000)
            deleted += self._db.execute("DELETE FROM results WHERE created_unix_ms < ?", (cutoff,)).rowcount
            self._rows -= deleted
        if self._rows > self.max_rows:
            pruned = self._db.execute(
                "DELETE FROM results WHERE rowid IN (SELECT rowid FROM results "
                "ORDER BY created_unix_ms ASC, caller ASC, request_id ASC LIMIT ?)",
                (self._rows - self.max_rows,),
            ).rowcount
            deleted += pruned
            self._rows -= pruned
        return deleted > 0

    def get(self, request_id: str, caller: str | None = None) -> result_store_pb2.StoredResult:
        """The result of ``caller``'s request ``request_id``; with ``caller`` None, the newest result stored
        under that id by any caller (operators, tests). Never waits for a put in progress (it sees the
        results committed before it)."""
        reader = self._reader()
        if caller is None:
            row = reader.execute(
                "SELECT body FROM results WHERE request_id = ? ORDER BY created_unix_ms DESC LIMIT 1",
                (request_id,),
            ).fetchone()
        else:
            row = reader.execute(
                "SELECT body FROM results WHERE caller = ? AND request_id = ?", (caller, request_id)
            ).fetchone()
        if row is None:
            raise NotFound(f"no result stored for request {shown(request_id)}")
        return result_store_pb2.StoredResult.FromString(row[0])

    def query(self, q: ResultQuery) -> tuple[list[result_store_pb2.StoredResult], str]:
        """Matching results, newest first, and the token of the next page ("" when this is the last)."""
        if q.page_size < 0 or (q.until_unix_ms and q.since_unix_ms > q.until_unix_ms):
            raise InvalidArgument("page_size must be >= 0 and since_unix_ms <= until_unix_ms")
        for value in (q.since_unix_ms, q.until_unix_ms):
            if not 0 <= value <= _MAX_INT64:
                raise InvalidArgument("since_unix_ms and until_unix_ms must be between 0 and 2^63-1")
        size = min(q.page_size or 100, MAX_PAGE)
        clauses: list[str] = []
        args: list[str | int] = []
        for column, text in (("device_id", q.device_id), ("model", q.model), ("caller", q.caller)):
            if text:
                clauses.append(f"{column} = ?")
                args.append(text)
        if q.since_unix_ms:
            clauses.append("created_unix_ms >= ?")
            args.append(q.since_unix_ms)
        if q.until_unix_ms:
            clauses.append("created_unix_ms < ?")
            args.append(q.until_unix_ms)
        if q.page_token:
            created, caller, request_id = _decode_token(q.page_token)
            clauses.append(
                "(created_unix_ms < ? OR (created_unix_ms = ? AND (caller < ? OR (caller = ? AND request_id < ?))))"
            )
            args += [created, created, caller, caller, request_id]
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT body FROM results {where} ORDER BY created_unix_ms DESC, caller DESC, request_id DESC LIMIT ?"
        results: list[result_store_pb2.StoredResult] = []
        more = False
        used = 0
        with self._lock:
            for (body,) in self._db.execute(sql, (*args, size + 1)):
                if len(results) == size or (results and used + len(body) > MAX_PAGE_BYTES):
                    more = True
                    break
                result = result_store_pb2.StoredResult.FromString(body)
                if len(body) > MAX_PAGE_BYTES:  # alone on its page, and still too large: leave the outputs out
                    del result.outputs[:]
                    result.outputs_omitted = True
                results.append(result)
                used += len(body)
        token = _encode_token(results[-1]) if more else ""
        return results, token

    def count(self) -> int:
        with self._lock:
            return self._count_rows()


def _encode_token(last: result_store_pb2.StoredResult) -> str:
    data = json.dumps([last.created_unix_ms, last.caller, last.request_id]).encode()
    return base64.urlsafe_b64encode(data).decode()


def _decode_token(token: str) -> tuple[int, str, str]:
    """The position a page token names; anything this store did not issue is INVALID_ARGUMENT."""
    refused = InvalidArgument(f"page_token {shown(token, 32)} is not one this store issued")
    created, caller, request_id = decode_token_list(token, 3, MAX_TOKEN_CHARS, refused)
    if type(created) is not int or not 0 <= created <= _MAX_INT64:
        raise refused
    if not (isinstance(caller, str) and isinstance(request_id, str)):
        raise refused
    try:
        check_id(caller, required=False)
        check_id(request_id, required=False)
    except InvalidArgument:
        raise refused from None
    return created, caller, request_id
