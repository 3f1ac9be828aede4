"""A lean async HTTP/1.1 client for load bodies: keep-alive pool, timeouts, per-endpoint stats.

Why a hand-written client
-------------------------
A load generator whose client saturates reports its own queueing as the server's latency. On the
reference machine (2 shared cores, nginx pinned to one, each generator to the other, 50 users;
``benchmarks/bench_http.py``) a quiet run gave: this client ~50-60k requests/s at ~90 % of its
core, pyreqwest ~15-25k/s, aiohttp ~8-10k/s, Locust FastHttpUser ~7.5-10k/s, httpx ~200/s, wrk
~150-230k/s; on a busy run (the generator getting ~40 % of its core) 10.9k/s against Locust's
3.2k/s, i.e. 3.1x Locust per CPU-second. A minimal asyncio protocol on the stock event loop is
therefore the transport; uvloop added only ~15 % and is not a dependency (it is used when the
caller's loop is uvloop). Responses are parsed by llhttp (``httptools``, as in uvicorn). The
per-request work is kept to: one cached request head, one future, one ``transport.write``, the
parser's callbacks, and one ``recorder.record``. No task, no timer handle, no stream object and
no read buffer per request.

Design notes
------------
* **Pool** (:mod:`.pool`): one pool per ``(scheme, host, port)``; idle connections are reused
  LIFO (the warmest socket first). ``max_connections`` caps open connections per host; callers
  beyond it wait (the wait counts in their latency and in their total timeout).
* **Timeouts** (:mod:`.connection`): ``connect_timeout`` bounds the TCP/TLS connect; ``timeout``
  bounds the whole call (pool wait, connect, upload, response). The read deadline is enforced by
  *one* lazily re-armed timer per connection, not a timer per request: a request only stores its
  deadline; when the timer fires it re-arms itself at the current request's deadline or fails it.
* **Stale keep-alive**: a server may close an idle connection just as it is reused. When a reused
  connection closes before any byte of the response arrived, an idempotent request with a
  replayable body (not a stream) is retried once on a fresh connection.
* **Bodies**: responses are framed by ``Content-Length``, ``Transfer-Encoding: chunked`` or the
  end of the connection, and buffered (``Response.body``). Uploads from bytes/str/json/forms are
  sent with ``Content-Length``; async iterators, sync iterators and file objects are streamed
  (:mod:`.body`; chunked unless their length is known or a ``Content-Length`` header is given)
  under transport flow control, so memory stays constant whatever the size.
* **Errors** (:mod:`.errors`) are categorised into :data:`ErrorKind` and raised as
  :class:`HttpError` subclasses whose message is stable per endpoint and cause
  (``"GET /items: 503 Service Unavailable"``), so the engine's error grouping (type + message)
  groups them usefully. A response llhttp rejects is an :class:`HttpProtocolError`. Every call is
  recorded into :data:`~pytest_stressguard.core.stats.current_recorder` under its name with its
  latency and error kind (``None`` on success).
* One client belongs to one event loop (the loop of its first request).
"""

from __future__ import annotations

from .client import HttpClient
from .errors import (
    ERROR_KINDS,
    ErrorKind,
    HttpConnectError,
    HttpError,
    HttpProtocolError,
    HttpRefused,
    HttpReset,
    HttpStatusError,
    HttpTimeout,
)
from .request import _SIMPLE_CACHE_MAX as _SIMPLE_CACHE_MAX  # read by the cache-bound test
from .response import Headers, Response

__all__ = [
    "ERROR_KINDS",
    "ErrorKind",
    "Headers",
    "HttpClient",
    "HttpConnectError",
    "HttpError",
    "HttpProtocolError",
    "HttpRefused",
    "HttpReset",
    "HttpStatusError",
    "HttpTimeout",
    "Response",
]
