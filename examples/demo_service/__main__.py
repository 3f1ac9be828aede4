"""Run the demo service: ``python -m examples.demo_service --dsn DSN --port 0``.

The socket is bound here (127.0.0.1, port 0 = any free port) and handed to uvicorn, so there is
no window in which another process can take the port; the bound port is printed as
``DEMO_SERVICE_PORT=<port>`` on stdout once the socket listens. SIGTERM/SIGINT shut down
gracefully (requests drain, the worker stops, the pool closes).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import uvicorn

from .app import create_app
from .settings import Settings, SettingsError


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m examples.demo_service", description=__doc__)
    parser.add_argument(
        "--dsn",
        default=os.environ.get("STRESSGUARD_DSN") or os.environ.get("DATABASE_URL"),
        help="PostgreSQL DSN (default: $STRESSGUARD_DSN, then $DATABASE_URL)",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 = any free port (default)")
    parser.add_argument("--schema", default="demo", help="schema holding this instance's tables")
    parser.add_argument("--data-dir", type=Path, default=None, help="upload storage (default: a temp dir)")
    parser.add_argument("--log-level", default="warning")
    parser.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="shut down when the parent process dies (used by the test launcher)",
    )
    args = parser.parse_args(argv)
    if not args.dsn:
        parser.error("no database: pass --dsn or set STRESSGUARD_DSN")
    return args


def _watch_parent(server: uvicorn.Server) -> None:
    parent = os.getppid()
    while not server.should_exit:
        if os.getppid() != parent:  # re-parented: whoever started us is gone
            server.should_exit = True
            return
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    own_dir = args.data_dir is None
    data_dir: Path = Path(tempfile.mkdtemp(prefix="stressguard-demo-")) if own_dir else args.data_dir
    try:
        try:
            settings = Settings.from_env(os.environ, dsn=args.dsn, data_dir=data_dir, schema=args.schema)
        except SettingsError as exc:
            print(f"demo_service: {exc}", file=sys.stderr)
            return 2
        # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on accepted sockets whose
        # proto says TCP; without it every response waits ~40 ms for Nagle + delayed ACK.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((args.host, args.port))
        sock.listen(2048)  # connections made before uvicorn serves wait in the backlog
        config = uvicorn.Config(
            create_app(settings),
            lifespan="on",
            log_level=args.log_level,
            access_log=False,
            timeout_graceful_shutdown=5,
            backlog=2048,
        )
        server = uvicorn.Server(config)
        if args.exit_with_parent:
            threading.Thread(target=_watch_parent, args=(server,), daemon=True).start()
        print(f"DEMO_SERVICE_PORT={sock.getsockname()[1]}", flush=True)
        print(f"DEMO_SERVICE_PID={os.getpid()}", flush=True)
        server.run(sockets=[sock])
        return 0 if server.started else 3
    finally:
        if own_dir:
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
