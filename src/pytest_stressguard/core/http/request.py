"""Request heads: parsed targets, prebuilt heads for the simple calls, and full requests."""

from __future__ import annotations

import json as _json
from collections.abc import AsyncIterable, Callable, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from .body import file_length
from .pool import _HostPool

__all__ = ["MISSING", "USER_AGENT", "DataType", "ParamsType", "check_header"]

USER_AGENT = "pytest-stressguard"
# Parsed targets and prebuilt request heads, per URL. Small on purpose: a REST soak with ids in
# its paths (/items/{id}) makes every URL new, and a 4096-entry cache kept growing for minutes,
# which the soak's leak gate saw as a 30-170 MB/h leak of the test process itself.
_SIMPLE_CACHE_MAX = 256

ParamsType = Mapping[str, Any] | Sequence[tuple[str, Any]]
#: bytes | bytearray | memoryview | str | Mapping[str, Any] (form) | AsyncIterable[bytes] |
#: Iterable[bytes] | a binary file object (anything with ``read``).
DataType = Any
#: (pool, head bytes, default stats name, full URL) of a call without body, headers or params.
SimpleEntry = tuple[_HostPool, bytes, str, str]


class _Missing:
    pass


MISSING: Any = _Missing()  # "no json= given": ``None`` is a valid JSON body


class _Target:
    __slots__ = ("host_header", "path", "pool_key", "target")

    def __init__(
        self, pool_key: tuple[str, str, int], host_header: str, path: str, target: str
    ) -> None:
        self.pool_key = pool_key
        self.host_header = host_header
        self.path = path
        self.target = target


def check_header(k: str, v: str) -> None:
    if not k or any(c in k for c in ":\r\n \t") or "\r" in v or "\n" in v:
        raise ValueError(f"invalid header {k!r}: {v!r}")


class _Requests:
    """Builds request heads for one client; ``targets`` and ``simple`` are its bounded caches."""

    __slots__ = ("base_url", "default_lines", "headers", "pool_for", "simple", "targets")

    def __init__(
        self,
        base_url: str | None,
        headers: dict[str, tuple[str, str]],
        pool_for: Callable[[tuple[str, str, int]], _HostPool],
    ) -> None:
        self.base_url = base_url
        self.headers = headers  # lower-case name -> (name, value), sent with every request
        self.pool_for = pool_for
        self.default_lines = "".join(
            f"{k}: {v}\r\n"
            for k, v in (("User-Agent", USER_AGENT), ("Accept", "*/*"))
            if k.lower() not in headers
        ) + "".join(f"{k}: {v}\r\n" for k, v in headers.values())
        self.targets: dict[str, _Target] = {}
        self.simple: dict[tuple[str, str], SimpleEntry] = {}

    def full_url(self, url: str) -> str:
        if url.startswith(("http://", "https://", "HTTP://", "HTTPS://")):
            return url
        if self.base_url is None:
            raise ValueError(f"relative URL {url!r} needs HttpClient(base_url=...)")
        if not url:
            return self.base_url
        return f"{self.base_url}/{url.lstrip('/')}"

    def target(self, url: str) -> _Target:
        t = self.targets.get(url)
        if t is not None:
            return t
        full = self.full_url(url)
        parts = urlsplit(full)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise ValueError(f"unsupported URL scheme in {full!r} (http and https only)")
        if parts.username is not None or parts.password is not None:
            raise ValueError(
                "credentials in the URL are not supported; send an Authorization header"
            )
        host = parts.hostname
        if not host:
            raise ValueError(f"no host in URL {full!r}")
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            raise ValueError(f"bad port in URL {full!r}") from None
        default_port = port == (443 if scheme == "https" else 80)
        hh = f"[{host}]" if ":" in host else host
        host_header = hh if default_port else f"{hh}:{port}"
        path = parts.path or "/"
        safe = "/%:@!$&'()*+,;=-._~"
        target = quote(path, safe=safe)
        if parts.query:
            target += "?" + quote(parts.query, safe=safe + "?")
        t = _Target((scheme, host, port), host_header, path, target)
        if len(self.targets) >= _SIMPLE_CACHE_MAX:
            self.targets.clear()
        self.targets[url] = t
        return t

    def simple_entry(self, method: str, url: str) -> SimpleEntry:
        """The cached head of a call without body, headers or params (built on a miss)."""
        _check_method(method)
        t = self.target(url)
        body_line = "Content-Length: 0\r\n" if method in ("POST", "PUT", "PATCH") else ""
        head = (
            f"{method} {t.target} HTTP/1.1\r\nHost: {t.host_header}\r\n"
            f"{self.default_lines}{body_line}\r\n"
        ).encode("latin-1")
        entry = (self.pool_for(t.pool_key), head, f"{method} {t.path}", self.full_url(url))
        if len(self.simple) >= _SIMPLE_CACHE_MAX:
            self.simple.clear()
        self.simple[(method, url)] = entry
        return entry

    def build(
        self,
        method: str,
        url: str,
        json: Any,
        data: Any,
        headers: Mapping[str, str] | None,
        params: ParamsType | None,
    ) -> tuple[_HostPool, bytes, str, str, Any, int | None]:
        """Head bytes (+ body when small), and the stream to send after the head, if any."""
        _check_method(method)
        t = self.target(url)
        full_url = self.full_url(url)
        target = t.target
        if params:
            qs = urlencode(params, doseq=True)
            if qs:
                target += ("&" if "?" in target else "?") + qs
                full_url += ("&" if "?" in full_url else "?") + qs
        hdrs: dict[str, tuple[str, str]] = dict(self.headers)
        if headers:
            for k, v in headers.items():
                v = str(v)
                check_header(k, v)
                hdrs[k.lower()] = (k, v)
        body, stream, length, ctype = _body(method, json, data)
        if ctype is not None and "content-type" not in hdrs:
            hdrs["content-type"] = ("Content-Type", ctype)
        hdrs.pop("transfer-encoding", None)
        if stream is not None:
            given = hdrs.get("content-length")
            if given is not None:
                if not given[1].isdigit():
                    raise ValueError(f"bad Content-Length header {given[1]!r}")
                length = int(given[1])
            if length is None:
                hdrs.pop("content-length", None)
                hdrs["transfer-encoding"] = ("Transfer-Encoding", "chunked")
            else:
                hdrs["content-length"] = ("Content-Length", str(length))
        elif body is not None:
            hdrs["content-length"] = ("Content-Length", str(len(body)))
        else:
            hdrs.pop("content-length", None)
        host = hdrs.pop("host", ("Host", t.host_header))[1]
        lines = [f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n"]
        if "user-agent" not in hdrs:
            lines.append(f"User-Agent: {USER_AGENT}\r\n")
        if "accept" not in hdrs:
            lines.append("Accept: */*\r\n")
        lines.extend(f"{k}: {v}\r\n" for k, v in hdrs.values())
        lines.append("\r\n")
        head = "".join(lines).encode("latin-1")
        if body:
            head += body
        return self.pool_for(t.pool_key), head, f"{method} {t.path}", full_url, stream, length


def _check_method(method: str) -> None:
    if not method.isupper() or not method.isalpha():
        raise ValueError(f"bad HTTP method {method!r}")


def _body(
    method: str, json: Any, data: Any
) -> tuple[bytes | None, Any, int | None, str | None]:
    """(body bytes, stream, stream length, content type) for ``json=``/``data=``."""
    if json is not MISSING:
        if data is not None:
            raise ValueError("pass json= or data=, not both")
        return _json.dumps(json, separators=(",", ":")).encode(), None, None, "application/json"
    if data is None:
        return (b"" if method in ("POST", "PUT", "PATCH") else None), None, None, None
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data), None, None, None
    if isinstance(data, str):
        return data.encode(), None, None, "text/plain; charset=utf-8"
    if isinstance(data, Mapping):
        return urlencode(data, doseq=True).encode(), None, None, "application/x-www-form-urlencoded"
    if hasattr(data, "read"):
        return None, data, file_length(data), None
    if isinstance(data, (AsyncIterable, Iterable)):
        return None, data, None, None
    raise TypeError(f"unsupported data type {type(data).__name__}")
