"""Assembly: the objects a running gateway is made of, built from its settings.

State is passed explicitly: the web app and the worker each receive a `Gateway`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from gateway.flows.reply_in import ReplyService
from gateway.flows.text_in import InboundService
from gateway.mail.dkim_check import DnsFunc
from gateway.metrics import Metrics
from gateway.rules.municipalities import Directory
from gateway.settings import Settings, load_municipality_map
from gateway.sms import (
    SmsProvider,
    Webhooks,
    error_descriptions,
    make_provider,
    make_webhooks,
)
from gateway.store import Store, open_store
from gateway.store.console import ConsoleStore

log = logging.getLogger(__name__)


class DirectoryHolder:
    """The current municipality directory; `reload()` swaps it atomically (SIGHUP)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._directory = Directory(load_municipality_map(path))

    def __call__(self) -> Directory:
        return self._directory

    def reload(self) -> Directory:
        """Load the map again; on error keep the old one and raise."""
        directory = Directory(load_municipality_map(self._path))
        with self._lock:
            self._directory = directory
        log.info("municipality map reloaded: %d municipalities", len(directory))
        return directory


@dataclass
class Gateway:
    """Everything the web app and the worker share."""

    settings: Settings
    store: Store
    directory: DirectoryHolder
    provider: SmsProvider
    metrics: Metrics = field(default_factory=Metrics)
    # Called (from any thread) after new outbox rows were committed: `sms311 run` wakes
    # its dispatcher with it, so a text does not wait for the next outbox poll.
    outbox_listeners: list[Callable[[], None]] = field(default_factory=list)
    # called when the webhook queued a text for the worker (`sms311 run`: wakes it at once)
    inbound_listeners: list[Callable[[], None]] = field(default_factory=list)
    _last_text_at: float = field(default=float("-inf"), init=False, repr=False)
    # DKIM's DNS lookups (dkimpy's `dnsfunc`); None: the system's resolvers. Tests stub it.
    dkim_dns: DnsFunc | None = None

    @classmethod
    def from_settings(cls, settings: Settings, *, check_schema: bool = True) -> Gateway:
        store = open_store(settings.database)
        if check_schema:
            store.check_schema()
        return cls(
            settings=settings,
            store=store,
            directory=DirectoryHolder(settings.municipality_map),
            provider=make_provider(settings.sms, settings.state_dir, settings.public_url),
        )

    @cached_property
    def console(self) -> ConsoleStore:
        """The staff console's view of the store (users, notes, audit, list queries)."""
        return ConsoleStore(self.store)

    @cached_property
    def describe_error(self) -> Callable[[int], tuple[str, str] | None]:
        """What the provider's error codes mean to an agent (for notices)."""
        return error_descriptions(self.settings.sms)

    @cached_property
    def webhooks(self) -> Webhooks:
        """The provider's webhooks (signature, forms, answers), checked against
        `public_url`; made once, reused by every request."""
        return make_webhooks(self.settings.sms, self.settings.public_url)

    @cached_property
    def inbound(self) -> InboundService:
        return InboundService(self.store, self.settings, self.directory)

    def replies(self, on_queued: Callable[[], None] | None = None) -> ReplyService:
        """The email-reply flow over this gateway's parts; `on_queued` is called after a reply
        queued something (the worker wakes its dispatcher with it)."""
        return ReplyService(
            self.store, self.settings, self.directory, self.metrics, on_queued=on_queued,
            dkim_dns=self.dkim_dns,
        )

    def outbox_changed(self) -> None:
        """New outbox rows were committed: tell the listeners (never raises)."""
        for listener in list(self.outbox_listeners):
            try:
                listener()
            except Exception:  # a wake-up is an optimisation; the worker polls anyway
                log.debug("outbox listener failed", exc_info=True)

    def webhook_busy(self, window: float) -> bool:
        """Did this process's webhook accept a text in the last `window` seconds?"""
        return time.monotonic() - self._last_text_at < window

    def inbound_changed(self) -> None:
        """A text was queued for the worker: tell the listeners (never raises)."""
        self._last_text_at = time.monotonic()
        for listener in list(self.inbound_listeners):
            try:
                listener()
            except Exception:  # a wake-up is an optimisation; the worker polls anyway
                log.debug("inbound listener failed", exc_info=True)

    def close(self) -> None:
        self.store.close()
