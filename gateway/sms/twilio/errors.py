"""Twilio's error codes (https://www.twilio.com/docs/api/errors): what each one means to the
gateway — try again later, or never (`permanent_reason`) — and to an agent reading a
notice (`describe`).

The neutral interface (`gateway.sms.base`) knows reasons ("opted_out", "invalid_number",
…), never codes: this module is where Twilio's numbers become those reasons.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.sms.base import PermanentReason

AUTHENTICATION_FAILED = 20003
NOT_FOUND = 20404
TOO_MANY_REQUESTS = 20429
HTTP_TOO_MANY_REQUESTS = 429
INVALID_FROM = 21212
INVALID_TO = 21211
NOT_A_MOBILE_NUMBER = 21614  # "To" is not a valid mobile number
REGION_NOT_ENABLED = 21408
OPTED_OUT = 21610  # the recipient texted STOP to this sender
NOT_REACHABLE_BY_SMS = 21612
BODY_TOO_LONG = 21617  # more than 1,600 characters
MESSAGING_SERVICE_NO_SENDERS = 21703
# delivery error codes (status callbacks: ErrorCode of an undelivered/failed message)
QUEUE_OVERFLOW = 30001
ACCOUNT_SUSPENDED = 30002
UNREACHABLE_HANDSET = 30003
MESSAGE_BLOCKED = 30004
UNKNOWN_HANDSET = 30005
LANDLINE_OR_UNREACHABLE_CARRIER = 30006
CARRIER_VIOLATION = 30007  # filtered as spam
UNKNOWN_DELIVERY_ERROR = 30008
MISSING_SEGMENT = 30009

#: Codes for which sending again later may work.
TEMPORARY_CODES = frozenset(
    {AUTHENTICATION_FAILED, TOO_MANY_REQUESTS, HTTP_TOO_MANY_REQUESTS, QUEUE_OVERFLOW}
)
_REASONS: dict[int, PermanentReason] = {
    OPTED_OUT: "opted_out",
    INVALID_TO: "invalid_number",
    NOT_A_MOBILE_NUMBER: "invalid_number",
    NOT_REACHABLE_BY_SMS: "unreachable",
    UNKNOWN_HANDSET: "invalid_number",
    LANDLINE_OR_UNREACHABLE_CARRIER: "unreachable",
    UNREACHABLE_HANDSET: "unreachable",
    REGION_NOT_ENABLED: "unreachable",
    CARRIER_VIOLATION: "filtered",
    MESSAGE_BLOCKED: "filtered",
    BODY_TOO_LONG: "too_long",
    INVALID_FROM: "sender",
    MESSAGING_SERVICE_NO_SENDERS: "sender",
    ACCOUNT_SUSPENDED: "sender",
}


def permanent_reason(code: int | None) -> PermanentReason:
    """Why a Twilio error code means "never": "opted_out" (21610), "invalid_number"
    (21211, 21614, 30005), "unreachable" (21612, 21408, 30003, 30006), "filtered"
    (30004, 30007), "too_long" (21617), "sender" (the sender is misconfigured: 21212,
    21703, 30002), else "rejected"."""
    return _REASONS.get(code, "rejected") if code is not None else "rejected"


#: Twilio's error codes as an agent should read them: (English, French).
DESCRIPTIONS: Mapping[int, tuple[str, str]] = {
    21211: ("not a valid phone number", "numéro de téléphone invalide"),
    21408: ("texting to this region is not enabled", "l'envoi vers cette région n'est pas activé"),
    21610: (
        "the resident has opted out (texted STOP)",
        "la personne s'est désabonnée (elle a texté ARRET ou STOP)",
    ),
    21612: ("this number cannot get our texts", "ce numéro ne peut pas recevoir nos textos"),
    21614: ("not a mobile number", "pas un numéro de cellulaire"),
    21617: ("the text is too long", "le texte est trop long"),
    30001: ("too many texts queued at once", "trop de textos en attente à la fois"),
    30002: ("the texting account is suspended", "le compte d'envoi de textos est suspendu"),
    30003: ("the phone is unreachable (off or out of coverage)",
            "le téléphone est injoignable (éteint ou hors de portée)"),
    30004: ("the number blocks our texts", "le numéro bloque nos textos"),
    30005: ("unknown number (it does not exist or is out of service)",
            "numéro inconnu (il n'existe pas ou n'est plus en service)"),
    30006: ("a landline, or a carrier that cannot receive texts",
            "ligne fixe, ou opérateur qui ne peut pas recevoir de textos"),
    30007: ("filtered by the carrier as spam", "filtré par l'opérateur comme pourriel"),
    30008: ("unknown error at the carrier", "erreur inconnue chez l'opérateur"),
}  # fmt: skip


def describe(code: int) -> tuple[str, str] | None:
    """What a Twilio error code means to an agent, (English, French); None if unknown."""
    return DESCRIPTIONS.get(code)
