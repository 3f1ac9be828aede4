"""Deterministic upload files for load tests: created fast, cached per session, always removed.

Content is a pure function of ``(content, seed)``: ``"random"`` bytes come from SHAKE-128 in
counter mode (block ``i`` of 1 MiB is ``shake_128(domain, seed, i)``), which is a FIPS 202
standard, identical on every platform and Python version, and incompressible; ``"zeros"`` files
are sparse (``truncate``), so a 10 GB zeros file costs no disk. Because a random block depends only
on its index, the first N bytes of any stream are the file of size N, and a stream of any size
runs in constant memory without touching disk.

Why SHAKE-128: measured on the reference 2-core machine it generates ~500-680 MB/s with one core,
against ~300 MB/s for ``random.Random(...).randbytes`` (whose output is also not promised to stay
the same across Python versions). Writing overlaps generation: a helper thread hashes (sha256)
and writes each block while the next one is generated, both of which release the GIL.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import hashlib
import json
import os
import shutil
import socket
import stat
import tempfile
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import psutil

from pytest_stressguard.core.units import parse_size

__all__ = [
    "BLOCK_SIZE",
    "DEFAULT_CHUNK_SIZE",
    "DIR_PREFIX",
    "Content",
    "UploadFile",
    "UploadFileFactory",
    "content_sha256",
    "find_stale_directories",
    "iter_content",
    "remove_stale_directories",
]

Content = Literal["random", "zeros"]
CONTENTS: tuple[Content, ...] = ("random", "zeros")

#: Generation block. Part of the content definition: changing it changes every random byte.
BLOCK_SIZE = 1 << 20
DEFAULT_CHUNK_SIZE = 1 << 20
#: Every factory writes into ``<base>/stressguard-files-<pid>-<random>/`` so leftovers are findable.
DIR_PREFIX = "stressguard-files-"
OWNER_FILE = ".stressguard-owner"
#: Directories without a readable owner file are considered stale after this many seconds.
ORPHAN_AGE_S = 3600.0

_DOMAIN = b"pytest-stressguard/files/1"
# Blocks queued to the writer thread at most (memory bound: (_MAX_IN_FLIGHT + 1) * BLOCK_SIZE).
_MAX_IN_FLIGHT = 2
_READ_ONLY = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH


# --------------------------------------------------------------------------- content


def _check_content(content: str) -> Content:
    if content not in CONTENTS:
        raise ValueError(f"invalid content {content!r}: allowed are 'random' and 'zeros'")
    return content


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"invalid seed {seed!r}: the seed must be an int")
    return seed


def _size(value: str | int | float, what: str = "size") -> int:
    # parse_size raises UnitsError (a ValueError) quoting the input and the allowed units.
    if isinstance(value, bool):
        raise TypeError(f"invalid {what} {value!r}: give bytes as an int or a string like '100MB'")
    return parse_size(value)


def _chunk_size(value: str | int) -> int:
    n = _size(value, "chunk_size")
    if n <= 0:
        raise ValueError(f"invalid chunk_size {value!r}: it must be at least 1 byte")
    return n


def random_block(seed: int, index: int, length: int = BLOCK_SIZE) -> bytes:
    """Block ``index`` of the random content for ``seed`` (its first ``length`` bytes)."""
    return hashlib.shake_128(b"%s\0%d\0%d" % (_DOMAIN, seed, index)).digest(length)


def _random_blocks(seed: int, size: int) -> Iterator[bytes]:
    full, rest = divmod(size, BLOCK_SIZE)
    for i in range(full):
        yield random_block(seed, i)
    if rest:
        # SHAKE is an XOF: a shorter digest is a prefix of the longer one, so truncated content
        # is always a prefix of longer content.
        yield random_block(seed, full, rest)


def _rechunk(blocks: Iterator[bytes], chunk_size: int) -> Iterator[bytes]:
    """Re-cut a stream of blocks into chunks of exactly ``chunk_size`` (the last may be shorter)."""
    buf = bytearray()
    for block in blocks:
        if not buf and len(block) == chunk_size:
            yield block
            continue
        view = memoryview(block)
        pos = 0
        while pos < len(view):
            need = chunk_size - len(buf)
            if not buf and len(view) - pos >= chunk_size:
                yield bytes(view[pos : pos + chunk_size])
                pos += chunk_size
                continue
            piece = view[pos : pos + need]
            buf += piece
            pos += len(piece)
            if len(buf) == chunk_size:
                yield bytes(buf)
                buf.clear()
    if buf:
        yield bytes(buf)


def _zero_chunks(size: int, chunk_size: int) -> Iterator[bytes]:
    full, rest = divmod(size, chunk_size)
    if full:
        zero = bytes(chunk_size)  # one immutable buffer, yielded again and again
        for _ in range(full):
            yield zero
    if rest:
        yield bytes(rest)


def iter_content(
    size: str | int,
    content: str = "random",
    seed: int = 0,
    chunk_size: str | int = DEFAULT_CHUNK_SIZE,
) -> Iterator[bytes]:
    """The deterministic bytes of ``(content, seed)``, ``size`` bytes long, in constant memory.

    Arguments are checked now, not at the first ``next()``."""
    n = _size(size)
    kind = _check_content(content)
    seed = _check_seed(seed)
    step = _chunk_size(chunk_size)
    if kind == "zeros":
        return _zero_chunks(n, step)
    return _rechunk(_random_blocks(seed, n), step)


@functools.lru_cache(maxsize=64)
def _zeros_sha256(size: int) -> str:
    h = hashlib.sha256()
    zero = memoryview(bytes(min(size, BLOCK_SIZE)))
    left = size
    while left:
        piece = zero[: min(left, len(zero))]
        h.update(piece)
        left -= len(piece)
    return h.hexdigest()


def content_sha256(size: str | int, content: str = "random", seed: int = 0) -> str:
    """sha256 (hex) of the content a stream of ``size`` bytes yields, computed without disk."""
    n = _size(size)
    if _check_content(content) == "zeros":
        return _zeros_sha256(n)
    h = hashlib.sha256()
    for block in _random_blocks(_check_seed(seed), n):
        h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- files


@dataclass(frozen=True)
class UploadFile:
    """A file on disk with known content: ``path``, ``size`` (bytes), ``sha256`` (hex)."""

    path: Path
    size: int
    sha256: str
    content: Content
    seed: int

    @property
    def name(self) -> str:
        return self.path.name

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def open(self) -> BinaryIO:
        """The file opened for binary reading (e.g. for ``files=`` of an HTTP client)."""
        return self.path.open("rb")

    def chunks(self, chunk_size: str | int = DEFAULT_CHUNK_SIZE) -> Iterator[bytes]:
        """The file's bytes read from disk in chunks of ``chunk_size``."""
        step = _chunk_size(chunk_size)
        path = self.path

        def read() -> Iterator[bytes]:
            with path.open("rb") as f:
                while chunk := f.read(step):
                    yield chunk

        return read()

    def stream(
        self, size: str | int | None = None, chunk_size: str | int = DEFAULT_CHUNK_SIZE
    ) -> Iterator[bytes]:
        """The same deterministic bytes, generated without disk in constant memory.

        ``size`` defaults to this file's size and may be larger (``.stream("1GB")``); the first
        N bytes of any stream equal the file of size N with the same content and seed."""
        return iter_content(self.size if size is None else size, self.content, self.seed, chunk_size)

    def async_stream(
        self, size: str | int | None = None, chunk_size: str | int = DEFAULT_CHUNK_SIZE
    ) -> AsyncIterator[bytes]:
        """:meth:`stream` for async HTTP clients (httpx ``content=``, aiohttp ``data=``).

        Each chunk is generated on the loop (about 1.5 ms per MiB) and the loop is yielded to
        between chunks, so other tasks keep running during a large upload."""
        chunks = self.stream(size, chunk_size)

        async def agen() -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield chunk
                await asyncio.sleep(0)

        return agen()

    def verify(self) -> bool:
        """Re-read the file and check its sha256 (detects a file modified behind the cache)."""
        h = hashlib.sha256()
        for chunk in self.chunks():
            h.update(chunk)
        return h.hexdigest() == self.sha256


def _write_random(path: Path, seed: int, size: int) -> str:
    """Write the random content to ``path``; return its sha256. Generation overlaps hash+write."""
    h = hashlib.sha256()
    with path.open("wb") as f, ThreadPoolExecutor(1, thread_name_prefix="stressguard-files") as ex:

        def consume(block: bytes) -> None:
            h.update(block)  # releases the GIL for large buffers
            f.write(block)

        # One writer thread runs the blocks in submission order; at most _MAX_IN_FLIGHT wait.
        in_flight: deque[Future[None]] = deque()
        for block in _random_blocks(seed, size):
            in_flight.append(ex.submit(consume, block))
            if len(in_flight) > _MAX_IN_FLIGHT:
                in_flight.popleft().result()
        while in_flight:
            in_flight.popleft().result()
    return h.hexdigest()


def _write_zeros(path: Path, size: int) -> str:
    with path.open("wb") as f:
        f.truncate(size)  # sparse where the filesystem supports it
    return _zeros_sha256(size)


def _default_name(size: int, content: Content, seed: int) -> str:
    return f"{content}-{size}-s{seed}.bin"


def _check_name(name: str) -> str:
    if (
        not isinstance(name, str)
        or not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\0" in name
    ):
        raise ValueError(f"invalid name {name!r}: give a plain file name such as 'report.zip'")
    return name


class UploadFileFactory:
    """Create deterministic upload files, cached by ``(size, content, seed)``.

    Files live in a private directory ``<directory>/stressguard-files-<pid>-<random>/`` created on
    first use. A second call with the same arguments returns the cached file without rewriting it;
    a ``name=`` gives the same bytes under that file name (a hard link, so no extra disk).
    ``cleanup()`` removes everything; it is also registered with :mod:`atexit`, and a directory
    left behind by a killed process is recognised by :func:`remove_stale_directories`.

    Files are made read-only because cached files are shared between tests. Thread-safe.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        prefix: str = DIR_PREFIX,
        register_atexit: bool = True,
    ) -> None:
        self._base = Path(directory) if directory is not None else Path(tempfile.gettempdir())
        self._prefix = prefix
        self._register_atexit = register_atexit
        self._lock = threading.Lock()
        self._dir: Path | None = None
        self._blobs: dict[tuple[int, Content, int], UploadFile] = {}
        self._named: dict[tuple[int, Content, int, str], UploadFile] = {}
        self._atexit_registered = False

    @property
    def base(self) -> Path:
        return self._base

    @property
    def directory(self) -> Path | None:
        """The private directory, or None before the first file (and after ``cleanup()``)."""
        return self._dir

    @property
    def files(self) -> list[UploadFile]:
        with self._lock:
            return [*self._blobs.values(), *self._named.values()]

    def __call__(
        self,
        size: str | int,
        content: str = "random",
        seed: int = 0,
        name: str | None = None,
    ) -> UploadFile:
        n = _size(size)
        kind = _check_content(content)
        seed = _check_seed(seed)
        if name is not None:
            name = _check_name(name)
        with self._lock:
            blob = self._blob(n, kind, seed)
            if name is None:
                return blob
            key = (n, kind, seed, name)
            cached = self._named.get(key)
            if cached is not None and cached.path.exists():
                return cached
            target = self._ensure_dir() / "named" / f"{kind}-{n}-s{seed}" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                try:
                    os.link(blob.path, target)
                except OSError:  # no hard links here (some filesystems): copy instead
                    shutil.copyfile(blob.path, target)
                    os.chmod(target, _READ_ONLY)
            named = UploadFile(target, n, blob.sha256, kind, seed)
            self._named[key] = named
            return named

    def _blob(self, size: int, content: Content, seed: int) -> UploadFile:
        key = (size, content, seed)
        cached = self._blobs.get(key)
        if cached is not None and cached.path.exists():
            return cached
        path = self._ensure_dir() / "blobs" / _default_name(size, content, seed)
        path.parent.mkdir(exist_ok=True)
        part = path.with_name(path.name + ".part")
        try:
            digest = _write_zeros(part, size) if content == "zeros" else _write_random(part, seed, size)
            os.chmod(part, _READ_ONLY)
            os.replace(part, path)
        except BaseException:  # includes KeyboardInterrupt: never leave a half-written file
            part.unlink(missing_ok=True)
            raise
        made = UploadFile(path, size, digest, content, seed)
        self._blobs[key] = made
        return made

    def _ensure_dir(self) -> Path:
        if self._dir is not None and self._dir.is_dir():
            return self._dir
        self._base.mkdir(parents=True, exist_ok=True)
        made = Path(tempfile.mkdtemp(prefix=f"{self._prefix}{os.getpid()}-", dir=self._base))
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "created": time.time()}
        (made / OWNER_FILE).write_text(json.dumps(owner), encoding="utf-8")
        self._dir = made
        self._blobs.clear()
        self._named.clear()
        if self._register_atexit and not self._atexit_registered:
            atexit.register(self._cleanup_at_exit)
            self._atexit_registered = True
        return made

    def cleanup(self) -> None:
        """Remove every file and the private directory. Safe to call twice."""
        with self._lock:
            if self._atexit_registered:
                atexit.unregister(self._cleanup_at_exit)
                self._atexit_registered = False
            made, self._dir = self._dir, None
            self._blobs.clear()
            self._named.clear()
            if made is not None:
                _remove_tree(made)

    def _cleanup_at_exit(self) -> None:
        # Interpreter exit: nothing useful to do on failure; a later session removes the leftover.
        with contextlib.suppress(OSError):
            self.cleanup()

    def __enter__(self) -> UploadFileFactory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def _remove_tree(path: Path) -> None:
    if not path.exists():
        return
    # Read-only files cannot be deleted on Windows; make them writable first.
    for root, _dirs, names in os.walk(path):
        for entry in names:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(root, entry), stat.S_IRUSR | stat.S_IWUSR)
    shutil.rmtree(path)


# --------------------------------------------------------------------------- leftovers


def _is_stale(path: Path, now: float) -> bool:
    try:
        owner = json.loads((path / OWNER_FILE).read_text(encoding="utf-8"))
        pid, host, created = int(owner["pid"]), str(owner["host"]), float(owner["created"])
    except (OSError, ValueError, KeyError, TypeError):
        try:
            return now - path.stat().st_mtime > ORPHAN_AGE_S
        except OSError:
            return False
    if host != socket.gethostname():
        return False  # a shared directory: we cannot tell whether that process is alive
    if not psutil.pid_exists(pid):
        return True
    try:
        # A live pid started after the directory was created is a reused pid.
        return bool(psutil.Process(pid).create_time() > created + 1.0)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def find_stale_directories(
    directory: str | os.PathLike[str] | None = None, *, prefix: str = DIR_PREFIX
) -> list[Path]:
    """Factory directories under ``directory`` whose owning process is gone (e.g. ``kill -9``)."""
    base = Path(directory) if directory is not None else Path(tempfile.gettempdir())
    now = time.time()
    try:
        candidates = sorted(p for p in base.iterdir() if p.name.startswith(prefix) and p.is_dir())
    except OSError:
        return []
    return [p for p in candidates if _is_stale(p, now)]


def remove_stale_directories(
    directory: str | os.PathLike[str] | None = None, *, prefix: str = DIR_PREFIX
) -> list[Path]:
    """Remove the directories :func:`find_stale_directories` reports; return those removed."""
    removed = []
    for path in find_stale_directories(directory, prefix=prefix):
        try:
            _remove_tree(path)
        except OSError:
            continue
        removed.append(path)
    return removed
