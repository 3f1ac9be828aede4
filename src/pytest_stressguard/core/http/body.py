"""Streamed request bodies: async/sync iterators and file objects, sent under flow control."""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from .connection import Result, _Conn

__all__ = ["UPLOAD_CHUNK", "file_length", "send_streamed"]

UPLOAD_CHUNK = 256 * 1024


async def send_streamed(
    conn: _Conn,
    head: bytes,
    source: Any,
    length: int | None,
    fut: asyncio.Future[Result],
    loop: asyncio.AbstractEventLoop,
) -> None:
    """Write ``head`` then ``source`` (chunked unless ``length`` is known), pausing whenever
    the transport asks to, so memory stays constant whatever the size."""
    t = conn.transport
    assert t is not None
    t.write(head)
    chunked = length is None
    sent = 0
    async for chunk in _chunks(source, loop):
        if fut.done() or conn.closed:
            conn.keep_alive = False  # answered (or failed) before the body was complete
            return
        if not chunk:
            continue
        if chunked:
            t.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
        else:
            t.write(chunk)
        sent += len(chunk)
        if conn.paused:
            await conn.drain()
    if fut.done() or conn.closed:
        conn.keep_alive = False
        return
    if chunked:
        t.write(b"0\r\n\r\n")
    elif sent != length:
        raise ValueError(f"body produced {sent} bytes but Content-Length is {length}")


def file_length(f: Any) -> int | None:
    """Bytes left in a file object, when knowable without reading it."""
    try:
        if isinstance(f, io.BytesIO):
            return f.getbuffer().nbytes - f.tell()
        size = os.fstat(f.fileno()).st_size
        return int(size - f.tell())
    except (OSError, AttributeError, ValueError, io.UnsupportedOperation):
        return None


async def _chunks(source: Any, loop: asyncio.AbstractEventLoop) -> AsyncIterator[bytes]:
    """Bytes chunks from an async iterable, a file object or a sync iterable."""
    if isinstance(source, AsyncIterable):
        async for chunk in source:
            yield _as_bytes(chunk)
    elif hasattr(source, "read"):
        in_memory = isinstance(source, io.BytesIO)
        while True:
            if in_memory:
                chunk = source.read(UPLOAD_CHUNK)
            else:  # file reads run in the default executor, off the event loop
                chunk = await loop.run_in_executor(None, source.read, UPLOAD_CHUNK)
            if not chunk:
                return
            yield _as_bytes(chunk)
    else:
        for chunk in source:
            yield _as_bytes(chunk)


def _as_bytes(chunk: Any) -> bytes:
    if isinstance(chunk, bytes):
        return chunk
    if isinstance(chunk, (bytearray, memoryview)):
        return bytes(chunk)
    if isinstance(chunk, str):
        return chunk.encode()
    raise TypeError(f"body chunks must be bytes, got {type(chunk).__name__}")
