"""What a call returns: :class:`Response` and its case-insensitive :class:`Headers`."""

from __future__ import annotations

import json as _json
from collections.abc import Iterator, Mapping
from typing import Any

from .errors import HttpStatusError, status_message


class Headers(Mapping[str, str]):
    """Case-insensitive, read-only response headers. Repeated fields are joined with ``", "``
    by ``[]``/``get``; :meth:`get_all` returns them separately; :attr:`raw` keeps the order."""

    __slots__ = ("_map", "raw")

    def __init__(self, raw: list[tuple[str, str]]) -> None:
        self.raw = raw
        m: dict[str, str] = {}
        for k, v in raw:
            lk = k.lower()
            m[lk] = f"{m[lk]}, {v}" if lk in m else v
        self._map = m

    def __getitem__(self, key: str) -> str:
        return self._map[key.lower()]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._map

    def __iter__(self) -> Iterator[str]:
        return iter(self._map)

    def __len__(self) -> int:
        return len(self._map)

    def get_all(self, key: str) -> list[str]:
        lk = key.lower()
        return [v for k, v in self.raw if k.lower() == lk]

    def __repr__(self) -> str:
        return f"Headers({self.raw!r})"


class Response:
    """A complete response: ``status``, ``reason``, ``headers``, ``body`` (bytes), ``elapsed_s``
    (seconds from the call to the last byte, pool wait and retries included)."""

    __slots__ = (
        "_headers", "_raw_headers", "body", "elapsed_s", "method", "name", "reason", "status",
        "url",
    )

    def __init__(
        self,
        status: int,
        headers: Headers | list[tuple[str, str]],
        body: bytes,
        elapsed_s: float,
        *,
        reason: str = "",
        method: str = "GET",
        url: str = "",
        name: str = "",
    ) -> None:
        self.status = status
        if isinstance(headers, Headers):
            self._headers: Headers | None = headers
            self._raw_headers = headers.raw
        else:
            self._headers = None  # built on first use: most load bodies never read headers
            self._raw_headers = headers
        self.body = body
        self.elapsed_s = elapsed_s
        self.reason = reason
        self.method = method
        self.url = url
        self.name = name

    @property
    def headers(self) -> Headers:
        h = self._headers
        if h is None:
            h = self._headers = Headers(self._raw_headers)
        return h

    @property
    def ok(self) -> bool:
        return self.status < 400

    @property
    def encoding(self) -> str:
        ctype = self.headers.get("content-type", "")
        for part in ctype.split(";")[1:]:
            k, _, v = part.strip().partition("=")
            if k.lower() == "charset" and v:
                return v.strip('"')
        return "utf-8"

    @property
    def text(self) -> str:
        try:
            return self.body.decode(self.encoding, errors="replace")
        except LookupError:
            return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return _json.loads(self.body)

    def raise_for_status(self) -> Response:
        """Raise :class:`HttpStatusError` when the status is >= 400; return ``self`` otherwise."""
        if self.status >= 400:
            raise HttpStatusError(status_message(self.name, self), self, name=self.name)
        return self

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.method} {self.url} {len(self.body)} bytes>"
