"""Serve one WSGI app with one candidate server, for bench/bench_webhook.py.

    python bench/serve.py SERVER APP PORT        (APP: bare | gateway; gateway reads
                                                  $GATEWAY_CONFIG)

SERVER is "production" (what `sms311 web` serves with: `gateway.run.server.WebServer`) or one
of the candidates in `SERVERS`. Pre-fork servers (gunicorn, granian) are exec'd, so the
process's pid is their master. Runs until SIGTERM/SIGINT. The candidates other than
waitress are not dependencies: `.venv/bin/pip install gunicorn granian cheroot` first.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import wsgi_apps

# name -> the command line of a pre-fork server ({app}: "bench.wsgi_apps:bare"/"…:gateway")
PREFORK: dict[str, list[str]] = {
    "gunicorn-sync-w4": ["gunicorn", "-k", "sync", "-w", "4"],
    "gunicorn-gthread-w1t8": ["gunicorn", "-k", "gthread", "-w", "1", "--threads", "8"],
    "gunicorn-gthread-w2t4": ["gunicorn", "-k", "gthread", "-w", "2", "--threads", "4"],
    "granian-w1": ["granian", "--interface", "wsgi", "--workers", "1", "--blocking-threads", "8"],
    "granian-w2": ["granian", "--interface", "wsgi", "--workers", "2", "--blocking-threads", "4"],
}
IN_PROCESS = ("production", "waitress-t4", "waitress-t8", "waitress-t16", "cheroot-t8")
SERVERS = (*IN_PROCESS, *PREFORK)


def _exec_prefork(server: str, app: str, port: int) -> None:
    argv = list(PREFORK[server])
    binary = str(Path(sys.executable).parent / argv[0])
    if argv[0] == "gunicorn":
        argv += ["-b", f"127.0.0.1:{port}", "--log-level", "warning",
                 f"bench.wsgi_apps:{app}()"]
    else:
        argv += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
                 "--factory", f"bench.wsgi_apps:{app}"]
    os.execv(binary, [binary, *argv[1:]])


def main() -> None:
    server, app_name, port_text = sys.argv[1:4]
    port = int(port_text)
    if server in PREFORK:
        _exec_prefork(server, app_name, port)
    app = wsgi_apps.bare() if app_name == "bare" else wsgi_apps.gateway()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    listen = f"127.0.0.1:{port}"
    if server == "production":
        from gateway.run.server import WebServer

        web = WebServer(app, listen)
        web.start()
        done.wait()
        web.stop()
    elif server.startswith("waitress"):
        from waitress.server import create_server

        threads = int(server.rsplit("-t", 1)[1])
        waitress = create_server(app, host="127.0.0.1", port=port, threads=threads)
        threading.Thread(target=waitress.run, daemon=True).start()
        done.wait()
        waitress.close()
    elif server == "cheroot-t8":
        from cheroot.wsgi import Server

        cheroot = Server(("127.0.0.1", port), app, numthreads=8)
        threading.Thread(target=cheroot.start, daemon=True).start()
        done.wait()
        cheroot.stop()
    else:
        raise SystemExit(f"unknown server {server!r}; one of {', '.join(SERVERS)}")


if __name__ == "__main__":
    main()
