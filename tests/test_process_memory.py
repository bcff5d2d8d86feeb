"""Each process carries only its own half (issue 16, README Performance: Memory).

`sms311 web` and `sms311 worker` are started for real, in subprocesses, on a SQLite store;
once each is serving, it writes the names of the modules it has loaded and exits. The
worker must not carry the web server, Flask or the webhooks; the web half must not carry
SMTP, the twilio REST client or requests; neither loads psycopg for a SQLite store.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.settings import load_settings
from gateway.sms import make_provider
from gateway.sms.twilio import LazyTwilioProvider

REPO = Path(__file__).resolve().parent.parent

# Run the CLI in this interpreter; once `ready` is in the log, write sys.modules and exit.
_PROBE = textwrap.dedent(
    """
    import json, os, sys, threading, time
    from gateway.cli import main

    out, log, ready = sys.argv[1], sys.argv[2], sys.argv[3]

    def watch():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if ready in open(log, encoding="utf-8", errors="replace").read():
                    break
            except FileNotFoundError:
                pass
            time.sleep(0.05)
        time.sleep(0.3)  # what starts right after the message, started
        with open(out, "w") as f:
            json.dump(sorted(sys.modules), f)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()
    sys.exit(main(sys.argv[4:]))
    """
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _settings(folder: Path) -> Path:
    (folder / "municipality_map.yaml").write_text(
        (REPO / "municipality_map.yaml").read_text(encoding="utf-8"), encoding="utf-8"
    )
    config = folder / "sms311.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            database: sqlite:///{folder / "gateway.db"}
            municipality_map: municipality_map.yaml
            state_dir: {folder / "var"}
            public_url: http://127.0.0.1:9
            web: {{listen: "127.0.0.1:{_free_port()}"}}
            log_level: info
            sms:
              provider: twilio
              account_sid: AC00000000000000000000000000000000
              auth_token: not-a-real-token
              sender: "31100"
              api_base_url: http://127.0.0.1:9
            email:
              from_address: "311 Text <sms@gateway.example>"
              reply_address: "reply+{{token}}@gateway.example"
              smtp: {{host: 127.0.0.1, port: 9, security: none}}
            fallback_mailbox: 311-unrouted@gateway.example
            """
        ),
        encoding="utf-8",
    )
    return config


def _modules(folder: Path, command: str, ready: str) -> set[str]:
    config = _settings(folder)
    out, log = folder / f"{command}.modules.json", folder / f"{command}.log"
    with log.open("wb") as sink:
        done = subprocess.run(
            [sys.executable, "-c", _PROBE, str(out), str(log), ready,
             "--config", str(config), command],
            cwd=folder, stdout=sink, stderr=subprocess.STDOUT, timeout=90,
            env={k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")},
        )  # fmt: skip
    assert done.returncode == 0, log.read_text(errors="replace")
    assert out.exists(), log.read_text(errors="replace")
    return set(json.loads(out.read_text()))


def _loaded(modules: set[str], package: str) -> bool:
    return package in modules or any(m.startswith(package + ".") for m in modules)


@pytest.mark.parametrize(
    ("command", "ready", "absent", "present"),
    [
        pytest.param(
            "worker", "dispatcher started",
            ["uvicorn", "flask", "werkzeug", "a2wsgi", "gateway.web", "gateway.run.web_server",
             "gateway.sms.twilio.webhook", "twilio.twiml", "aiosmtpd", "psycopg"],
            ["aiosmtplib", "gateway.run.worker", "sqlalchemy"],
            id="worker",
        ),
        pytest.param(
            "web", "web listening on",
            ["aiosmtplib", "aioimaplib", "requests", "twilio.rest", "gateway.run.worker",
             "gateway.mail.smtp", "aiosmtpd", "psycopg"],
            ["uvicorn", "flask", "gateway.web.asgi", "gateway.sms.twilio.webhook"],
            id="web",
        ),
    ],
)  # fmt: skip
def test_each_half_loads_only_what_it_runs(
    tmp_path: Path, command: str, ready: str, absent: list[str], present: list[str]
) -> None:
    subprocess.run(
        [sys.executable, "-m", "gateway", "--config", str(_settings(tmp_path)), "db", "upgrade"],
        check=True, capture_output=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    modules = _modules(tmp_path, command, ready)
    assert [p for p in present if not _loaded(modules, p)] == []  # the probe saw it running
    assert [p for p in absent if _loaded(modules, p)] == []


def test_the_twilio_client_is_built_at_its_first_use_and_settings_are_checked_at_once(
    tmp_path: Path,
) -> None:
    settings = load_settings(_settings(tmp_path), {})
    provider = make_provider(settings.sms, settings.state_dir, settings.public_url)
    assert isinstance(provider, LazyTwilioProvider)
    assert provider._real is None  # nothing built yet
    real = provider.real
    assert provider.real is real and real.api_base_url == "http://127.0.0.1:9"
    blank = dataclasses.replace(settings.sms, sender="")
    with pytest.raises(ValueError, match=r"sms\.sender is required"):
        LazyTwilioProvider(blank)

