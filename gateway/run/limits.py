"""Process limits: as many open files as the system lets this process have.

Every connection (webhook, console, reply ingress, database, IMAP, SMTP) is a file
descriptor. The soft limit is often 1024 while the hard limit is far higher; running out
stops the web half accepting requests (seen: 1,100 idle SMTP connections stopped /healthz
and the webhook). At start the gateway raises its soft limit to the hard one
(`raise_open_files_limit`); the systemd units set `LimitNOFILE=65536`. The reply ingress
also takes at most `email.ingress.max_connections` connections, and at most half of
whatever limit there is (`ingress_connection_share`), so it alone can never use them all.
"""

from __future__ import annotations

import logging

try:
    import resource
except ImportError:  # pragma: no cover - not POSIX
    resource = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

# When the hard limit is "unlimited", how far to raise the soft one (Linux refuses more
# than fs.nr_open, 1,048,576 by default).
UNLIMITED_TARGET = 1_048_576


def open_files_limit() -> int | None:
    """The soft RLIMIT_NOFILE now (None: unknown or unlimited)."""
    if resource is None:
        return None
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def raise_open_files_limit() -> tuple[int, int] | None:
    """Raise the soft RLIMIT_NOFILE to the hard limit; (before, after), or None when it
    could not be read. A refusal is logged and the old limit kept."""
    if resource is None:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = UNLIMITED_TARGET if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("open files limit left at %d (raising it to %d failed: %s)",
                        soft, target, exc)
            return int(soft), int(soft)
        log.info("open files limit raised from %d to %d", soft, target)
        return int(soft), int(target)
    return int(soft), int(soft)


def ingress_connection_share(wanted: int, limit: int | None = None) -> int:
    """How many connections the reply ingress may hold at once: `wanted`, but at most half
    the open files limit (`limit`, default the process's), leaving the rest to the web half,
    the database and the mail clients."""
    limit = open_files_limit() if limit is None else limit
    if limit is None:
        return wanted
    return max(1, min(wanted, limit // 2))
