"""Content-addressed blob store on a local directory: every blob named by its sha256, verified on read."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from splitinfer.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted

__all__ = ["BlobStore"]

_SHA = re.compile(r"^[0-9a-f]{64}$")
READ_CHUNK_BYTES = 1 << 20


def check_sha(sha256: str) -> str:
    if not _SHA.fullmatch(sha256):  # fullmatch: "$" alone would let a trailing newline through
        raise InvalidArgument(f"{sha256[:80]!r} is not a sha256 in lowercase hex (64 characters)")
    return sha256


class BlobStore:
    """Blobs under ``root/blobs/ab/abcdef...``; writes are atomic (temp file, fsync, rename)."""

    def __init__(self, root: Path, max_blob_bytes: int = 4 << 30) -> None:
        self.root = root
        self._blobs = root / "blobs"
        self._blobs.mkdir(parents=True, exist_ok=True)
        self.max_blob_bytes = max_blob_bytes

    def path(self, sha256: str) -> Path:
        check_sha(sha256)
        return self._blobs / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def put(
        self, chunks: Iterable[bytes], expected_sha256: str = "", size_bytes: int | None = None
    ) -> tuple[str, bool]:
        """Stores a blob; returns (sha256, already_present). InvalidArgument when the bytes do not match the
        declared sha256 or size (nothing is stored then); ResourceExhausted beyond ``max_blob_bytes``."""
        if expected_sha256:
            check_sha(expected_sha256)
        if size_bytes is not None and size_bytes > self.max_blob_bytes:
            raise ResourceExhausted(f"blob of {size_bytes} bytes exceeds the pool's limit of {self.max_blob_bytes}")
        digest = hashlib.sha256()
        written = 0
        fd, tmp_name = tempfile.mkstemp(dir=self._blobs, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as tmp:
                for chunk in chunks:
                    written += len(chunk)
                    if written > self.max_blob_bytes or (size_bytes is not None and written > size_bytes):
                        raise InvalidArgument(f"blob is larger than declared ({size_bytes}) or than the limit")
                    digest.update(chunk)
                    tmp.write(chunk)
                tmp.flush()
                os.fsync(tmp.fileno())
            sha = digest.hexdigest()
            if size_bytes is not None and written != size_bytes:
                raise InvalidArgument(f"blob has {written} bytes, {size_bytes} were declared")
            if expected_sha256 and sha != expected_sha256:
                raise InvalidArgument(f"blob's sha256 is {sha}, {expected_sha256} was declared; not stored")
            target = self.path(sha)
            if target.is_file():
                return sha, True
            target.parent.mkdir(exist_ok=True)
            os.replace(tmp_name, target)
            return sha, False
        finally:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)

    def put_bytes(self, data: bytes) -> str:
        return self.put([data], size_bytes=len(data))[0]

    def read(self, sha256: str) -> bytes:
        """The whole blob, verified; FailedPrecondition when the stored bytes no longer match their name."""
        data = b"".join(self.stream(sha256))
        return data

    def stream(self, sha256: str) -> Iterator[bytes]:
        """The blob in chunks, after verifying the whole file against its name."""
        path = self.path(sha256)
        if not path.is_file():
            raise NotFound(f"no artifact with sha256 {sha256} in the pool")
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(READ_CHUNK_BYTES), b""):
                digest.update(block)
        if digest.hexdigest() != sha256:
            raise FailedPrecondition(f"artifact {sha256} is corrupt on disk (its sha256 is {digest.hexdigest()})")
        with path.open("rb") as f:
            yield from iter(lambda: f.read(READ_CHUNK_BYTES), b"")
