"""`sms311 [--config FILE] <command>`; `python -m gateway` is the same. The console script
`sms311` and `python -m gateway` call `main`, which turns a configuration problem into exit 2
and a refused schema or an unreachable database into exit 1 (`sms311 --help`, written in
`parser.DESCRIPTION`, lists the commands and every exit code).

- `parser`: the argparse tree (every command, flag, help line and description);
- `ops`: operation: check-config, run, web, worker, db, outbox, failed, privacy, directory;
- `users`: the staff console's accounts (`user …`);
- `sandbox`: the embedded sandbox behind `make run` (`sandbox run | text | reply`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from gateway.cli.ops import schema_advice
from gateway.cli.parser import build_parser
from gateway.settings import ConfigError
from gateway.store import SchemaOutOfDate, StoreUnavailable

__all__ = ["build_parser", "main", "schema_advice"]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except SchemaOutOfDate as exc:
        print(f"sms311: {schema_advice(exc, args)}", file=sys.stderr)
        return 1
    except StoreUnavailable as exc:
        print(f"sms311: {exc}", file=sys.stderr)
        return 1
    return result
