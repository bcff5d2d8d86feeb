"""Automatic emails to the agent, in the conversation's thread (no I/O): `AgentNotice`,
`compose_notice`.

A notice tells the agent what became of a reply: shortened, not sent because the resident
opted out, not delivered, not sent, or not texted at all (an email reply below its signature,
empty, from someone who may not answer, answering no conversation, unreadable: `NOT_TEXTED_WHY`);
or — kind "console_reply" — it is a copy of a reply written in the web console, so that the
mailbox shows the whole conversation. `AgentNotice` is the outbox payload (`to_dict` /
`from_dict`, JSON-safe, "type": "notice"); `compose_notice` writes it in the notice's language
and then the other (English and French), marked so that no auto-responder answers it.
`error_text` says what a provider error code means, for the agent, as the provider's
`DescribeError` says (the rules know no provider's codes).

Header injection is impossible: every header value is reduced to one line first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP
from typing import Any, Literal

from gateway.rules.mime_fast import RawEmail, build_raw, thread_headers
from gateway.rules.municipalities import DEFAULT_TIMEZONE
from gateway.rules.thread import (
    CONVERSATION_HEADER,
    bare,
    one_line,
    reply_subject,
    set_thread_headers,
    thread_fields_from_dict,
    thread_fields_to_dict,
)

NOTICE_HEADER = "X-SMS311-Notice"

NoticeKind = Literal[
    "shortened", "opted_out", "delivery_failed", "not_sent", "console_reply", "not_texted"
]
NOTICE_KINDS: tuple[NoticeKind, ...] = (
    "shortened", "opted_out", "delivery_failed", "not_sent", "console_reply", "not_texted",
)  # fmt: skip
# Why an agent's reply email was not texted at all ("not_texted" notices).
NotTextedWhy = Literal["below_signature", "empty", "not_agent", "unroutable", "unreadable"]
NOT_TEXTED_WHY: tuple[NotTextedWhy, ...] = (
    "below_signature", "empty", "not_agent", "unroutable", "unreadable",
)  # fmt: skip
#: Why a reply email was kept in the Failed list (the store's `why`): a `NotTextedWhy`, whose
#: sender (an agent) is told, or "not_authenticated" (its sender's domain is not authenticated:
#: never told, the From may be forged).
KeptWhy = Literal[
    "below_signature", "empty", "not_agent", "unroutable", "unreadable", "not_authenticated"
]
KEPT_WHY: tuple[KeptWhy, ...] = (*NOT_TEXTED_WHY, "not_authenticated")
ConsoleOutcome = Literal["texted", "opted_out"]
CONSOLE_OUTCOMES: tuple[ConsoleOutcome, ...] = ("texted", "opted_out")
NOTICE_EXCERPT_CHARS = 200

_STATUS_FR = {"undelivered": "non livré", "failed": "échec", "not_sent": "non envoyé"}


#: How a provider's error code reads to an agent: (English, French), or None when unknown.
#: Each provider has its own (`gateway.sms.base.ProviderKind.describe_error`); the rules
#: know no provider's codes.
DescribeError = Callable[[int], "tuple[str, str] | None"]


def no_description(code: int) -> tuple[str, str] | None:
    """The `DescribeError` of a provider whose codes are not described: always None."""
    return None


def error_text(
    code: int | None, language: str = "en", describe: DescribeError = no_description
) -> str | None:
    """What a provider error code means, in "en" or "fr" (as `describe` says); None for
    an unknown code."""
    texts = describe(code) if code is not None else None
    if texts is None:
        return None
    return texts[1] if language == "fr" else texts[0]


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


@dataclass(frozen=True, kw_only=True)
class AgentNotice:
    """A notice to the agent about one of their replies (an outbox payload).

    `subject` is the conversation's thread subject ("Re: " is added when composing,
    never twice). `details` is JSON-safe and depends on `kind`:

    - "shortened": sent_chars, original_chars — the reply was too long and cut;
    - "opted_out": — the resident texted STOP, the reply was not sent;
    - "delivery_failed": status ("undelivered" | "failed"), error_code (int | None),
      optionally error_message (the provider's text);
    - "not_sent": reason (English text), optionally error_code;

    and for each of these reply_excerpt: the start of the reply concerned (quoted, at
    most `NOTICE_EXCERPT_CHARS` characters).

    - "console_reply": a copy, for the municipality's mailbox (and the sticky agent), of
      a reply an agent wrote in the web console: agent_name (str | None), agent_email,
      text (the WHOLE reply as it was texted, quoted in full), outcome ("texted" |
      "opted_out": not texted, the resident texted STOP), parts (SMS queued, 0 when
      opted out), optionally shortened (bool: the reply had to be cut to fit).

    - "not_texted": an agent's reply EMAIL that was not texted at all: why (one of
      `NOT_TEXTED_WHY`: "below_signature" — the answer was below the signature line;
      "empty" — nothing left once quotes and signature were cut; "not_agent" — the
      sender may not answer this municipality's residents; "unroutable" — not an
      answer to any conversation; "unreadable" — binary data or the wrong charset),
      optionally sender and municipality (names shown for "not_agent"), and
      reply_excerpt — never for "not_agent": the reply flow quotes no text of a sender
      who may not answer that conversation (a stranger to it). `conversation_id` is
      None for "unroutable" (the notice then answers the agent's own email: its
      In-Reply-To/References and subject).

    `date` (the Date header) is fixed when the notice is made, so a retried notice is
    the same email.
    """

    conversation_id: int | None
    from_address: str
    to: tuple[str, ...]
    reply_to: str
    subject: str
    message_id: str
    kind: str
    cc: tuple[str, ...] = ()
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    language: str = "en"
    details: dict[str, Any] = field(default_factory=dict)
    date: datetime = field(default_factory=_utcnow)
    timezone: str = DEFAULT_TIMEZONE

    def __post_init__(self) -> None:
        if self.kind not in NOTICE_KINDS:
            raise ValueError(
                f"unknown notice kind {self.kind!r} (one of {', '.join(NOTICE_KINDS)})"
            )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict with "type": "notice"."""
        return {
            "type": "notice",
            **thread_fields_to_dict(self),
            "language": self.language,
            "kind": self.kind,
            "details": dict(self.details),
            "date": self.date.isoformat(),
            "timezone": self.timezone,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AgentNotice:
        """The inverse of `to_dict`. Raises KeyError/ValueError on a malformed payload."""
        date = data.get("date")
        return cls(
            **thread_fields_from_dict(data),
            language=str(data.get("language") or "en"),
            kind=str(data["kind"]),
            details=dict(data.get("details") or {}),
            date=datetime.fromisoformat(str(date)) if date is not None else _utcnow(),
            timezone=str(data.get("timezone") or DEFAULT_TIMEZONE),
        )


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _error_part(
    code: int | None, language: str, fallback: str, describe: DescribeError
) -> str:
    """ "error 30003: unreachable …" (or only what is known)."""
    described = error_text(code, language, describe) or one_line(fallback)
    word = "erreur" if language == "fr" else "error"
    colon = " :" if language == "fr" else ":"
    if code is not None and described:
        return f"{word} {code}{colon} {described}"
    if code is not None:
        return f"{word} {code}"
    return described


def _notice_lines(notice: AgentNotice, language: str, describe: DescribeError) -> str:
    """The one-paragraph explanation in `language` ("en" or "fr"); provider error codes
    read as `describe` says."""
    details = notice.details
    fr = language == "fr"
    if notice.kind == "shortened":
        sent = _int(details.get("sent_chars"))
        original = _int(details.get("original_chars"))
        counts = ""
        if sent is not None and original is not None:
            counts = (
                f" : la personne en a reçu les {sent} premiers caractères sur {original}"
                if fr
                else f": the resident received the first {sent} of its {original} characters"
            )
        if fr:
            return (
                f"Votre réponse était trop longue pour des textos{counts}. "
                "Pour envoyer la suite, répondez à ce courriel avec le reste."
            )
        return (
            f"Your reply was too long for text messages{counts}. "
            "To send the rest, reply to this email with it."
        )
    if notice.kind == "opted_out":
        if fr:
            return (
                "Votre réponse n'a PAS été envoyée par texto : la personne s'est désabonnée "
                "(elle a texté ARRET ou STOP). Rien ne peut lui être envoyé avant qu'elle "
                "texte START."
            )
        return (
            "Your reply was NOT texted: the resident has opted out of text messages "
            "(they texted STOP). Nothing can be sent to them until they text START."
        )
    if notice.kind == "delivery_failed":
        code = _int(details.get("error_code"))
        status = one_line(str(details.get("status") or ""))
        error = _error_part(code, language, str(details.get("error_message") or ""), describe)
        shown_status = _STATUS_FR.get(status, status) if fr else status
        inside = ", ".join(p for p in (shown_status, error) if p)
        why = f" ({inside})" if inside else ""
        if fr:
            return (
                f"Votre réponse n'a pas pu être livrée au téléphone de la personne{why}. "
                "Joignez-la autrement au besoin."
            )
        return (
            f"Your reply could not be delivered to the resident's phone{why}. "
            "You may need to reach them another way."
        )
    if notice.kind == "console_reply":
        return _console_reply_lines(details, fr)
    if notice.kind == "not_texted":
        return _not_texted_lines(details, fr)
    # not_sent
    code = _int(details.get("error_code"))
    reason = str(details.get("reason") or "")
    if fr:
        reason = str(details.get("reason_fr") or "") or error_text(code, "fr", describe) or reason
        why = f" : {one_line(reason)}" if reason.strip() else ""
        return f"Votre réponse n'a pas été envoyée par texto{why}."
    reason = reason or error_text(code, "en", describe) or ""
    why = f": {one_line(reason)}" if reason.strip() else ""
    return f"Your reply was not texted{why}."


def _not_texted_lines(details: Mapping[str, Any], fr: bool) -> str:
    """The "not_texted" explanation: why the agent's email was not texted, and what to do."""
    why = details.get("why")
    sender = one_line(str(details.get("sender") or ""))
    sender = sender or ("cette adresse" if fr else "this address")
    city = one_line(str(details.get("municipality") or ""))
    city = city or ("cette municipalité" if fr else "this municipality")
    if fr:
        said = "Votre réponse n'a PAS été envoyée par texto"
        if why == "below_signature":
            return (
                f"{said} : elle était sous la ligne de signature (« -- », « Envoyé de mon "
                "iPhone » ou un bloc nom/titre/téléphone), et tout ce qui suit une signature "
                "est retiré. Écrivez votre réponse au-dessus de votre signature et renvoyez-la."
            )
        if why == "not_agent":
            return (
                f"{said} : {sender} ne fait pas partie des agents qui peuvent répondre aux "
                f"résidents de {city}. Répondez depuis votre adresse d'agent de {city}, ou "
                "demandez à l'administrateur de la passerelle de vous ajouter."
            )
        if why == "unroutable":
            return (
                "Votre courriel n'a PAS été envoyé par texto : il ne répond à aucune "
                "conversation connue de la passerelle (l'adresse de réponse et les références "
                "du fil manquent ou sont inconnues). Pour écrire à une personne, répondez au "
                "courriel de sa conversation."
            )
        if why == "unreadable":
            return (
                f"{said} : son texte est illisible (données binaires ou mauvais jeu de "
                "caractères). Renvoyez-la en texte ordinaire."
            )
        return (
            f"{said} : il ne restait rien à envoyer une fois l'historique cité et la signature "
            "retirés. Écrivez votre réponse en haut du courriel, au-dessus du message cité, et "
            "renvoyez-la."
        )
    said = "Your reply was NOT texted"
    if why == "below_signature":
        return (
            f"{said}: it was below the signature line (\"-- \", \"Sent from my iPhone\" or a "
            "name/title/phone block), and everything below a signature is cut. Write your "
            "answer above your signature and send it again."
        )
    if why == "not_agent":
        return (
            f"{said}: {sender} is not one of the agents who may answer {city}'s residents. "
            f"Answer from your {city} agent address, or ask the gateway's operator to add you."
        )
    if why == "unroutable":
        return (
            "Your email was NOT texted: it does not answer any conversation the gateway knows "
            "(the reply address and the thread references are missing or unknown). To write "
            "to a resident, reply to the email of their conversation."
        )
    if why == "unreadable":
        return (
            f"{said}: its text cannot be read (binary data or the wrong character set). "
            "Send it again as plain text."
        )
    return (
        f"{said}: nothing was left to text once the quoted history and the signature were "
        "cut. Write your answer at the top of the email, above the quoted message, and send "
        "it again."
    )


def _console_reply_lines(details: Mapping[str, Any], fr: bool) -> str:
    """The "console_reply" explanation: who answered from the console, and whether the
    resident was texted (in how many messages, shortened?) or not (opted out)."""
    name = one_line(str(details.get("agent_name") or ""))
    address = one_line(str(details.get("agent_email") or ""))
    if name and address and name.casefold() != address.casefold():
        who = f"{name} ({address})"
    else:
        who = name or address or ("Un agent" if fr else "An agent")
    outcome = details.get("outcome")
    parts = _int(details.get("parts"))
    if fr:
        said = f"{who} a répondu depuis la console web 311."
        if outcome == "opted_out":
            return (
                f"{said} La réponse n'a PAS été envoyée par texto : la personne s'est "
                "désabonnée (elle a texté ARRET ou STOP). Rien ne peut lui être envoyé avant "
                "qu'elle texte START."
            )
        if outcome != "texted":
            return said
        count = f" en {parts} textos" if parts is not None and parts > 1 else ""
        cut = " (raccourcie : elle était trop longue)" if details.get("shortened") is True else ""
        return f"{said} La réponse a été envoyée par texto à la personne{count}{cut}."
    said = f"{who} answered from the 311 web console."
    if outcome == "opted_out":
        return (
            f"{said} The reply was NOT texted: the resident has opted out of text messages "
            "(they texted STOP). Nothing can be sent to them until they text START."
        )
    if outcome != "texted":
        return said
    count = f" in {parts} messages" if parts is not None and parts > 1 else ""
    cut = " (shortened: it was too long)" if details.get("shortened") is True else ""
    return f"{said} The reply was texted to the resident{count}{cut}."


def _quote(text: str) -> str:
    """`text` quoted with "> " on every line (blank lines as ">")."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").strip()
    lines = [line.rstrip() for line in text.split("\n")]
    return "\n".join(f"> {line}" if line else ">" for line in lines)


def _excerpt(text: str) -> str:
    """The start of the reply, quoted with "> " (at most NOTICE_EXCERPT_CHARS)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").strip()
    if len(text) >= NOTICE_EXCERPT_CHARS:
        cut = text[:NOTICE_EXCERPT_CHARS]
        space = cut.rfind(" ")
        text = (cut[:space] if space > NOTICE_EXCERPT_CHARS // 2 else cut).rstrip() + "…"
    return _quote(text)


def _notice_body(notice: AgentNotice, describe: DescribeError) -> str:
    first, second = ("fr", "en") if notice.language == "fr" else ("en", "fr")
    parts = [
        _notice_lines(notice, first, describe) + "\n" + _notice_lines(notice, second, describe)
    ]
    if notice.kind == "console_reply":
        # The copy shows the whole reply, quoted like the other notices' excerpts.
        text = str(notice.details.get("text") or "")
        if text.strip():
            label = "Réponse / Reply:" if first == "fr" else "Reply / Réponse :"
            parts.append(label + "\n" + _quote(text))
        names = (
            "Copie automatique de la passerelle texto 311 — répondez à ce courriel pour "
            "répondre par texto",
            "Automatic copy from the 311 text gateway — reply to this email to answer by text "
            "message",
        )
        joiner = "\n"  # two long lines
    else:
        excerpt = str(notice.details.get("reply_excerpt") or "")
        if excerpt.strip():
            label = (
                "Votre réponse / Your reply:" if first == "fr" else "Your reply / Votre réponse :"
            )
            parts.append(label + "\n" + _excerpt(excerpt))
        names = (
            "Avis automatique de la passerelle texto 311",
            "Automatic notice from the 311 text gateway",
        )
        joiner = " / "
    footer = joiner.join(names if first == "fr" else names[::-1])
    return "\n\n".join(parts) + "\n\n-- \n" + footer + "\n"


def compose_notice(notice: AgentNotice, describe: DescribeError = no_description) -> EmailMessage:
    """The notice email, in the conversation's thread (policy `email.policy.SMTP`); a
    provider error code in it reads as `describe` says (the provider's own descriptions).

    Headers: From (the gateway), To/Cc (the agent; for a "console_reply" copy the mailbox,
    Cc the sticky agent), Reply-To (the conversation's reply address, so answering it
    texts the resident as usual), Subject "Re: <thread>",
    Date, Message-ID, In-Reply-To, References, X-SMS311-Conversation, and — so that
    no auto-responder answers it — Auto-Submitted: auto-generated (RFC 3834) and
    X-Auto-Response-Suppress: All (Exchange/Outlook); X-SMS311-Notice: <kind>.
    The body is text/plain: the explanation in the notice's language, then the other
    (English and French), then the start of the reply concerned, quoted (for a
    "console_reply" copy: the whole reply, quoted).
    """
    message = EmailMessage(policy=SMTP)
    set_thread_headers(
        message,
        notice,
        subject=reply_subject(notice.subject),
        date=notice.date,
        timezone=notice.timezone,
    )
    message["Auto-Submitted"] = "auto-generated"
    message["X-Auto-Response-Suppress"] = "All"
    if notice.conversation_id is not None:
        message[CONVERSATION_HEADER] = bare(str(notice.conversation_id))
    message[NOTICE_HEADER] = notice.kind
    message.set_content(_notice_body(notice, describe), cte="quoted-printable")
    return message


def compose_notice_raw(notice: AgentNotice, describe: DescribeError = no_description) -> RawEmail:
    """What `compose_notice` makes, as the bytes SMTP sends and their envelope, written
    directly (`gateway.rules.mime_fast`); it reads back as `compose_notice`'s email does.
    A header value the direct writer does not cover is composed by `compose_notice`."""
    found = thread_headers(
        notice, subject=reply_subject(notice.subject), date=notice.date,
        timezone=notice.timezone,
    )
    if found is None:
        return RawEmail.from_message(compose_notice(notice, describe))
    lines, sender, recipients = found
    lines.append("Auto-Submitted: auto-generated\r\nX-Auto-Response-Suppress: All\r\n")
    if notice.conversation_id is not None:
        lines.append(f"{CONVERSATION_HEADER}: {bare(str(notice.conversation_id))}\r\n")
    lines.append(f"{NOTICE_HEADER}: {bare(notice.kind)}\r\n")
    return build_raw(
        lines, _notice_body(notice, describe), (),
        sender=sender, recipients=recipients, message_id=bare(notice.message_id),
    )
