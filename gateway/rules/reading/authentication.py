"""Is a reply's sender who its From says? The pure half of sender authentication (no I/O).

Contract:

- `sender_of(from_values) -> Sender | Refused`: the one address of the one `From` header
  (`from_values`: every From header's raw value, in order). Refused (with the reason) unless
  there is exactly one From header holding exactly one address, no group, that parses with no
  defect (so `agent@city.example <evil@evil.example>`, `<agent@city.example>@evil.example`,
  two From headers, two addresses, a group or no address are refused), whose domain is a
  host name, and whose display name names no other address.
- `trusted_results(values, trusted) -> list[AuthResults]`: of the `Authentication-Results`
  headers (RFC 8601; `values` top first, i.e. the last added first), those believed: the
  topmost consecutive run whose authserv-id is in `trusted` (the first header with any other
  authserv-id, or none, ends it: it and everything below came with the message), and of
  those only the topmost of each authserv-id (a server that does not remove forged copies of
  its own header cannot be fooled by one placed below its own).
- `aligned(domain, signer)`: relaxed alignment without a public-suffix list: the two domains
  are equal or one is a subdomain of the other (the signer having at least two labels).
- `authenticate(sender, results, dkim_domains) -> Verdict`: authenticated when a believed
  header says `dmarc=pass` with `header.from` the From domain, or `dkim=pass` with `header.d`
  (else the domain of `header.i`) aligned with it, or when a DKIM signature the gateway
  verified itself (`dkim_domains`: their d= domains) is aligned with it. A believed header
  is read whole, as one verdict: nothing in it counts when it holds more than one `dmarc`
  result (one message has one; the others were written in, e.g. through an envelope sender
  that a server copied unescaped into a comment), when its `dmarc` result is about another
  `header.from` (the server read another From than we did; a `dmarc=pass` that names none
  authenticates nothing), or — for its `dkim=pass`
  results — when its `dmarc` result for this domain is `fail` (the server found no aligned
  pass: a `dkim=pass` beside it was not written by the server).

The DKIM verification itself needs DNS, so it lives in `gateway.mail.dkim_check`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email import policy
from email.parser import BytesParser

__all__ = [
    "AuthResult",
    "AuthResults",
    "Refused",
    "Sender",
    "Verdict",
    "aligned",
    "authenticate",
    "authentication_headers",
    "parse_auth_results",
    "sender_of",
    "trusted_results",
]

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})+")
_LOCAL_RE = re.compile(r"[^\s@<>()\[\]\\,;:\"]{1,64}")
_ADDRESS_IN_RE = re.compile(r"[^\s<>()\"',;:]+@[^\s<>()\"',;:]+")
MAX_HEADER_CHARS = 8_000  # an Authentication-Results or From longer than this is not read


@dataclass(frozen=True)
class Sender:
    address: str  # lower-cased addr-spec
    domain: str  # its domain, lower-cased


@dataclass(frozen=True)
class Refused:
    reason: str


def sender_of(from_values: Sequence[str]) -> Sender | Refused:
    """The one unambiguous From address, or why there is none (see the module docstring)."""
    if not from_values:
        return Refused("no From header")
    if len(from_values) > 1:
        return Refused(f"{len(from_values)} From headers")
    raw = from_values[0]
    if len(raw) > MAX_HEADER_CHARS:
        return Refused("From header too long")
    try:
        header = policy.default.header_fetch_parse("From", raw)
        groups = header.groups
        defects = header.defects
    except Exception:  # the parser gives up on some inputs: they are refused
        return Refused("From cannot be parsed")
    if defects:
        return Refused("From does not parse unambiguously")
    if len(groups) != 1:
        return Refused("From holds no address" if not groups else "From holds several addresses")
    group = groups[0]
    if group.display_name is not None:
        return Refused("From is a group")
    if len(group.addresses) != 1:
        return Refused("From holds several addresses" if group.addresses else "no address")
    address = group.addresses[0]
    addr = address.addr_spec.lower()
    local, at, domain = addr.rpartition("@")
    if not at or not _LOCAL_RE.fullmatch(local) or not _DOMAIN_RE.fullmatch(domain):
        return Refused("From is not a plain name@domain address")
    for named in _ADDRESS_IN_RE.findall(address.display_name or ""):
        if named.lower() != addr:
            return Refused("From's display name names another address")
    return Sender(addr, domain)


MAX_HEAD_BYTES = 256 * 1024  # the header section read for From and Authentication-Results


def authentication_headers(raw: bytes) -> tuple[list[str], list[str]]:
    """(every From value, every Authentication-Results value), raw and top first, from the
    header section of `raw` (never raises)."""
    head = raw[:MAX_HEAD_BYTES]
    ends = [at for at in (head.find(b"\r\n\r\n"), head.find(b"\n\n")) if at >= 0]
    if ends:
        head = head[: min(ends) + 2]
    try:
        msg = BytesParser(policy=policy.compat32).parsebytes(head, headersonly=True)
        items = [(str(k).lower(), str(v)) for k, v in msg.raw_items()]
    except Exception:
        return [], []
    return (
        [v for k, v in items if k == "from"],
        [v for k, v in items if k == "authentication-results"],
    )


# -- Authentication-Results (RFC 8601) -------------------------------------------------------


@dataclass(frozen=True)
class AuthResult:
    method: str  # "dkim", "dmarc", "spf", …
    result: str  # "pass", "fail", …
    properties: dict[str, str]  # "header.d" -> "city.example", lower-cased names


@dataclass(frozen=True)
class AuthResults:
    authserv_id: str | None  # lower-cased; None when the header names none (Microsoft 365)
    results: tuple[AuthResult, ...]


def _uncomment(value: str) -> str:
    """`value` with its (nested) comments removed and quoted strings kept, unquoted."""
    out: list[str] = []
    depth = 0
    quoted = False
    escaped = False
    for char in value:
        if escaped:
            if depth == 0:
                out.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif quoted:
            if char == '"':
                quoted = False
            else:
                out.append(" " if char == ";" else char)
        elif char == "(":
            depth += 1
        elif char == ")" and depth:
            depth -= 1
        elif depth:
            continue
        elif char == '"':
            quoted = True
        else:
            out.append(char)
    return "".join(out)


def parse_auth_results(value: str) -> AuthResults:
    """One Authentication-Results value (unfolded or not). A header whose first part is a
    result (`spf=pass …`, as Microsoft 365 writes it) has no authserv-id."""
    text = _uncomment(value[:MAX_HEADER_CHARS].replace("\r", " ").replace("\n", " "))
    parts = [part.strip() for part in text.split(";")]
    head = parts[0].split()
    authserv_id: str | None = None
    rest = parts[1:]
    if head and "=" not in head[0]:
        authserv_id = head[0].lower()
    else:
        rest = parts  # no authserv-id: the first part is already a result
    results: list[AuthResult] = []
    for part in rest:
        words = part.split()
        if not words or "=" not in words[0]:
            continue  # "none", or something unreadable
        method, _, result = words[0].partition("=")
        properties: dict[str, str] = {}
        for word in words[1:]:
            name, eq, prop = word.partition("=")
            if eq and name:
                properties.setdefault(name.lower(), prop.lower())
        results.append(AuthResult(method.split("/")[0].lower(), result.lower(), properties))
    return AuthResults(authserv_id, tuple(results))


def trusted_results(values: Sequence[str], trusted: Iterable[str]) -> list[AuthResults]:
    """The believed headers among `values` (top first): see the module docstring."""
    ids = {t.lower() for t in trusted}
    believed: list[AuthResults] = []
    seen: set[str] = set()
    for value in values:
        parsed = parse_auth_results(value)
        if parsed.authserv_id is None or parsed.authserv_id not in ids:
            break  # this one, and all below it, may have come with the message
        if parsed.authserv_id in seen:
            continue  # only the topmost of each server: a lower one may be forged
        seen.add(parsed.authserv_id)
        believed.append(parsed)
    return believed


def aligned(domain: str, signer: str) -> bool:
    """Relaxed alignment, simply: equal, or one a subdomain of the other (no public-suffix
    list; a one-label signer such as a top-level domain never aligns)."""
    domain, signer = domain.lower().rstrip("."), signer.lower().rstrip(".").lstrip("@")
    if not signer or "." not in signer or not domain:
        return False
    return domain == signer or domain.endswith("." + signer) or signer.endswith("." + domain)


@dataclass(frozen=True)
class Verdict:
    authenticated: bool
    how: str  # what authenticated it, or why it is not


def _signer_of(result: AuthResult) -> str:
    signer = result.properties.get("header.d", "")
    if not signer:
        signer = result.properties.get("header.i", "").rpartition("@")[2]
    return signer


def authenticate(
    sender: Sender, results: Sequence[AuthResults], dkim_domains: Sequence[str] = ()
) -> Verdict:
    """Whether `sender`'s domain is authenticated (see the module docstring)."""
    for header in results:
        dmarcs = [r for r in header.results if r.method == "dmarc"]
        if len(dmarcs) > 1:
            continue  # a message has one DMARC result: more were written into the header
        if dmarcs:
            (dmarc,) = dmarcs
            about = dmarc.properties.get("header.from")
            if about is not None and about != sender.domain:
                continue  # the server judged another From than ours: nothing here is ours
            if dmarc.result == "pass" and about == sender.domain:
                return Verdict(True, f"dmarc=pass from {header.authserv_id}")
            if dmarc.result == "fail":
                continue  # the server itself found no aligned DKIM or SPF pass
        for result in header.results:
            signer = _signer_of(result)
            if (
                result.method == "dkim"
                and result.result == "pass"
                and aligned(sender.domain, signer)
            ):
                return Verdict(True, f"dkim=pass ({signer}) from {header.authserv_id}")
    for signer in dkim_domains:
        if aligned(sender.domain, signer):
            return Verdict(True, f"DKIM signature by {signer} verified")
    seen = f"{len(results)} trusted Authentication-Results" if results else "no trusted "
    seen += "" if results else "Authentication-Results"
    signed = f"; DKIM verified for {', '.join(dkim_domains)}" if dkim_domains else ""
    return Verdict(False, f"{sender.domain} not authenticated ({seen}{signed})")
