"""Error kinds and the exceptions a call raises; :class:`_Failure` is the transport's own."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from .response import Response

ErrorKind = Literal["refused", "reset", "timeout", "http_4xx", "http_5xx", "protocol", "connect"]
#: Every error kind, in the order reports list them. ``connect`` covers connection failures
#: other than a refusal or a timeout (name resolution, unreachable network, ...).
ERROR_KINDS: tuple[ErrorKind, ...] = (
    "refused", "reset", "timeout", "http_4xx", "http_5xx", "protocol", "connect",
)


class HttpError(Exception):
    """An HTTP call failed. ``kind`` is one of :data:`ERROR_KINDS`; ``name`` is the stats name."""

    kind: ErrorKind = "protocol"

    def __init__(self, message: str, *, name: str = "", method: str = "", url: str = "") -> None:
        super().__init__(message)
        self.name = name
        self.method = method
        self.url = url


class HttpRefused(HttpError):
    """The connection was refused (nothing listens on the port)."""

    kind: ErrorKind = "refused"


class HttpReset(HttpError):
    """The connection was reset or closed by the server before the response was complete."""

    kind: ErrorKind = "reset"


class HttpTimeout(HttpError, TimeoutError):
    """The call did not complete within its timeout (connect, pool wait or response)."""

    kind: ErrorKind = "timeout"


class HttpProtocolError(HttpError):
    """The server's response is not valid HTTP/1.x (or uses something unsupported)."""

    kind: ErrorKind = "protocol"


class HttpConnectError(HttpError):
    """The connection could not be made for another reason (name resolution, unreachable)."""

    kind: ErrorKind = "connect"


class HttpStatusError(HttpError):
    """The server answered with a status >= 400 that the call did not accept."""

    def __init__(self, message: str, response: Response, *, name: str = "") -> None:
        super().__init__(message, name=name, method=response.method, url=response.url)
        self.response = response
        self.status = response.status
        self.kind: ErrorKind = "http_5xx" if response.status >= 500 else "http_4xx"


ERROR_CLASSES: dict[str, type[HttpError]] = {
    "refused": HttpRefused,
    "reset": HttpReset,
    "timeout": HttpTimeout,
    "protocol": HttpProtocolError,
    "connect": HttpConnectError,
}


class _Failure(Exception):
    """Internal: a transport failure, turned into a public :class:`HttpError` by the client."""

    def __init__(self, kind: str, detail: str, stale: bool = False) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.stale = stale


def status_message(name: str, r: Response) -> str:
    return f"{name}: {r.status} {r.reason}".rstrip()
