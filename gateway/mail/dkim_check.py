"""DKIM signatures verified by the gateway itself (dkimpy), DNS through a replaceable lookup.

Contract:

- `verified_dkim_domains(raw, dnsfunc, timeout=) -> tuple[str, ...]`: the d= domains (lower-
  cased) of the message's DKIM signatures that verify, looking at the first
  `MAX_SIGNATURES`. A signature counts only when it covers the From header and signs the
  whole body (no `l=`). Never raises: a bad signature, a key that cannot be fetched or a DNS
  timeout is simply not a verified signature.
- `dns_txt(timeout)`: the production lookup (dnspython, the system's resolvers, one lookup
  at most `timeout` seconds). A lookup is dkimpy's `dnsfunc`: `(name: bytes, timeout=…) ->
  bytes | None` (the TXT record's text, or None when there is none). Tests pass a stub that
  answers from a dict.

Whether a verified domain authenticates the From domain (alignment) is a rule:
`gateway.rules.reading.authentication`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import dns.resolver

# dkimpy and dnspython (about 14 MB) are imported when a reply is first checked, not by
# every process that imports this module (the web half never checks one).

__all__ = ["MAX_SIGNATURES", "DnsFunc", "dns_txt", "verified_dkim_domains"]

log = logging.getLogger(__name__)

DnsFunc = Callable[..., bytes | None]
MAX_SIGNATURES = 5  # each may cost a DNS lookup; real mail has one to three


def dns_txt(timeout: float = 5.0) -> DnsFunc:
    """dkimpy's `dnsfunc` over dnspython: the TXT record at `name`, or None."""
    resolver: list[dns.resolver.Resolver] = []

    def lookup(name: bytes | str, timeout: float = timeout) -> bytes | None:
        import dkim
        import dns.exception
        import dns.resolver

        if not resolver:
            resolver.append(dns.resolver.Resolver())  # reads /etc/resolv.conf
        qname = name.decode("ascii") if isinstance(name, bytes) else name
        try:
            answer = resolver[0].resolve(
                qname, "TXT", lifetime=timeout, search=False, raise_on_no_answer=False
            )
        except (dns.resolver.NXDOMAIN, dns.resolver.NoNameservers, dns.resolver.NoAnswer):
            return None
        except dns.exception.Timeout as exc:
            raise dkim.DnsTimeoutError(str(exc)) from exc
        for rdata in answer:
            strings: Any = getattr(rdata, "strings", None)
            if strings:
                return b"".join(strings)
        return None

    return lookup


def verified_dkim_domains(raw: bytes, dnsfunc: DnsFunc, *, timeout: float = 5.0) -> tuple[str, ...]:
    """The d= domains of the signatures that verify (see the module docstring)."""
    import dkim

    try:
        checker = dkim.DKIM(raw, minkey=1024, timeout=int(max(1, timeout)))
        count = sum(1 for name, _ in checker.headers if name.lower() == b"dkim-signature")
    except Exception:  # an unreadable message has no signature worth anything
        return ()
    domains: list[str] = []
    for idx in range(min(count, MAX_SIGNATURES)):
        try:
            if not checker.verify(idx=idx, dnsfunc=dnsfunc):
                continue
        except Exception as exc:  # dkim.DKIMException, a DNS error, a malformed key…
            log.info("DKIM signature %d not verified: %s", idx, type(exc).__name__)
            continue
        fields = checker.signature_fields
        if b"l" in fields or b"from" not in checker.include_headers:
            continue
        domain = bytes(fields.get(b"d", b"")).decode("ascii", "replace").strip().lower()
        if domain and domain not in domains:
            domains.append(domain)
    return tuple(domains)
