"""`sms311 sandbox run | text | reply`: the embedded sandbox behind `make run`, and playing
resident and agent against it (the work itself is in `gateway.run.sandbox`)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from gateway.cli.output import printable
from gateway.logs import setup_logging
from gateway.sandbox_data import SANDBOX_DIR
from gateway.settings import ConfigError, Problem, Settings, load_settings

__all__ = ["SANDBOX_DIR", "cmd_sandbox_reply", "cmd_sandbox_run", "cmd_sandbox_text"]


def cmd_sandbox_run(args: argparse.Namespace) -> int:
    from gateway.run.sandbox import run_sandbox

    setup_logging("INFO")
    return run_sandbox(args.dir, args.map, args.port, args.smtp_port, args.ingress_port)


def _sandbox_settings(args: argparse.Namespace) -> Settings:
    """The settings of the sandbox the `sandbox text`/`reply` commands talk to."""
    config = Path(args.config) if args.config else SANDBOX_DIR / "sms311.yaml"
    if not config.exists():
        raise ConfigError([Problem(str(config), None, "", "no such file: start the sandbox "
                                   "first (`make run`), or name its settings with --config")])
    return load_settings(config, os.environ)


def cmd_sandbox_text(args: argparse.Namespace) -> int:
    from gateway.run.sandbox import SandboxError, media_file, send_text

    settings = _sandbox_settings(args)
    try:
        status, replies = send_text(
            settings,
            args.number,
            args.text,
            media=[media_file(m) for m in args.media],
            from_city=args.city,
            from_state=args.state,
        )
    except SandboxError as exc:
        print(f"sms311: {exc}", file=sys.stderr)
        return exc.code
    if status != 200:
        print(f"sms311: the gateway answered HTTP {status}", file=sys.stderr)
        return 1
    for reply in replies:
        print("<< " + printable(reply).replace("\n", "\n   "))
    if not replies:
        if not args.text.strip() and not args.media:
            # The webhook drops a text with no words and no picture: nothing is stored,
            # emailed or answered (`gateway.web.webhooks.inbound`).
            print("(no reply: the gateway ignores an empty text; nothing was emailed)")
        else:
            print("(no reply: the text was emailed)")
    return 0


def cmd_sandbox_reply(args: argparse.Namespace) -> int:
    from gateway.run.sandbox import SandboxError, reply_as_agent

    settings = _sandbox_settings(args)
    try:
        sent = reply_as_agent(settings, args.mailbox, args.text, sender=args.sender)
    except SandboxError as exc:
        print(f"sms311: {exc}", file=sys.stderr)
        return exc.code
    for record in sent:
        to, body = printable(str(record["to"]), one_line=True), printable(str(record["body"]))
        print(f">> to {to}: {body}")
    if not sent:
        print("(nothing texted: see the gateway's log for why)")
    return 0

