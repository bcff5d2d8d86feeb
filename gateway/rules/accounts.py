"""Console accounts: passwords, one-time passwords, TOTP and what each role may do (no I/O).

Passwords
- `hash_password(password) -> str`: an Argon2id hash (argon2-cffi's `PasswordHasher`, RFC 9106
  low-memory profile), salted, self-describing (`$argon2id$v=19$m=…`).
- `verify_password(password_hash, password) -> bool`: True only for the right password. Never
  raises for a wrong password, an empty or garbled hash, or a hash of another scheme: False.
- `needs_rehash(password_hash) -> bool`: True when the hash was made with other parameters
  than today's (the console re-hashes at the next successful sign-in), or cannot be read.
- `new_one_time_password() -> str`: a readable temporary password, "k7m2p-xw9rd-…": 4 groups
  of 5 characters from `OTP_ALPHABET` (31 characters without 0/o, 1/l/i), about 99 bits.
  It passes `check_password_policy`.
- `check_password_policy(password, *, email=None, name=None, language="en") -> str | None`:
  None when the password is acceptable, else why not (a short sentence fragment in
  English or French, e.g. "must be at least 12 characters"). Refused: fewer than
  `MIN_PASSWORD_LENGTH` characters, more than `MAX_PASSWORD_LENGTH`, one character
  repeated, fewer than 4 different characters, a line break or control character, the
  email (or its part before the @, or the name) itself, a plain run like "123456789012" or
  "qwertyuiopas", and a few very common passwords with digits around them ("Password2024!").
  Last, what passes those rules must score at least 3 of 4 with zxcvbn
  (`gateway.rules.password_strength`: common and breached-password patterns, dictionary
  words, names, dates, keyboard walks, the account's own email and name), else the reason
  is "is too easy to guess: " and zxcvbn's warning ("This is a top-100 common password").

Two-factor sign-in (TOTP, RFC 6238: 6 digits, 30 s, SHA-1, what every authenticator app uses)
- `new_totp_secret() -> str`: 32 base32 characters (160 bits).
- `totp_uri(email, secret, issuer="sms311") -> str`: the `otpauth://totp/…` URI (a QR code of
  it is what authenticator apps scan).
- `verify_totp(secret, code, at) -> bool`: the code is right at `at` (an aware datetime; naive
  raises ValueError), or one 30-second step before or after. Spaces and dashes in the code
  are ignored ("123 456"). Anything else (letters, wrong length, a garbled secret) is False.

Roles (`gateway.store.console.Role`: agent | supervisor | admin; any other string may nothing)
- `can_assign_others(role)`: every role (assigning a conversation to a colleague).
- `can_export(role)`, `can_view_audit(role)`: supervisor and admin.
- `can_manage_users(role)`: admin.
"""

from __future__ import annotations

import hmac
import re
import secrets
import unicodedata
from datetime import datetime

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from gateway.rules import password_strength

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024  # hashing a huge input is a cheap denial of service
OTP_ALPHABET = "23456789abcdefghjkmnpqrstuvwxyz"  # no 0/o, 1/l/i
OTP_GROUPS = 4
OTP_GROUP_LENGTH = 5
TOTP_ISSUER = "sms311"
TOTP_VALID_WINDOW = 1  # steps of 30 s either side of the current one

_HASHER = PasswordHasher()  # parameters only: no state, safe to share between threads


# ------------------------------------------------------------------------------------------
# Passwords


def hash_password(password: str) -> str:
    """A new salted Argon2id hash of `password` (see the module docstring)."""
    return _HASHER.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """True when `password` is the one `password_hash` was made from; never raises."""
    if not password_hash or not isinstance(password_hash, str) or not isinstance(password, str):
        return False
    try:
        return _HASHER.verify(password_hash, password)
    except (VerificationError, InvalidHashError, ValueError, TypeError):
        return False


def needs_rehash(password_hash: str) -> bool:
    """True when the hash should be replaced after the next successful sign-in."""
    try:
        return _HASHER.check_needs_rehash(password_hash)
    except (InvalidHashError, VerificationError, ValueError, TypeError):
        return True


def new_one_time_password() -> str:
    """A temporary password to hand over once, e.g. "k7m2p-xw9rd-4hq8t-b3nfz" (~99 bits)."""
    return "-".join(
        "".join(secrets.choice(OTP_ALPHABET) for _ in range(OTP_GROUP_LENGTH))
        for _ in range(OTP_GROUPS)
    )


_MESSAGES = {
    "short": (
        f"must be at least {MIN_PASSWORD_LENGTH} characters",
        f"doit compter au moins {MIN_PASSWORD_LENGTH} caractères",
    ),
    "long": (
        f"must be at most {MAX_PASSWORD_LENGTH} characters",
        f"doit compter au plus {MAX_PASSWORD_LENGTH} caractères",
    ),
    "control": (
        "must not contain line breaks or control characters",
        "ne doit contenir ni saut de ligne ni caractère de contrôle",
    ),
    "one": (
        "must not be a single character repeated",
        "ne doit pas répéter un seul caractère",
    ),
    "few": (
        "must use at least 4 different characters",
        "doit utiliser au moins 4 caractères différents",
    ),
    "email": (
        "must not be your email address or your name",
        "ne doit être ni votre adresse courriel ni votre nom",
    ),
    "run": (
        "must not be a simple run of keys or digits",
        "ne doit pas être une simple suite de touches ou de chiffres",
    ),
    "common": (
        "is too common",
        "est trop courant",
    ),
}

# Runs of keys and digits (and their reverses) that a password must not be a piece of.
_RUNS = (
    "01234567890123456789",
    "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyz",
    "qwertyuiopasdfghjklzxcvbnm",
    "azertyuiopqsdfghjklmwxcvbn",
    "qwertzuiopasdfghjklyxcvbnm",
    "1qaz2wsx3edc4rfv5tgb6yhn7ujm8ik9ol0p",
)
# Very common passwords; refused also with digits and punctuation around them.
_COMMON = frozenset(
    {
        "password", "passw0rd", "motdepasse", "qwerty", "azerty", "letmein", "welcome",
        "bienvenue", "iloveyou", "admin", "administrator", "sms311", "changeme", "secret",
        "monkey", "dragon", "football", "hockey", "baseball", "sunshine", "princess",
        "canada", "ottawa", "toronto", "montreal", "quebec", "soleil", "bonjour",
    }
)  # fmt: skip


def _plain(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def check_password_policy(
    password: str,
    *,
    email: str | None = None,
    name: str | None = None,
    language: str = "en",
) -> str | None:
    """None if `password` may be used, else why not (`language` "fr" for French)."""
    reason = _refusal(password, email, name)
    if reason is None:
        weak = password_strength.weakness(
            password, password_strength.user_words(email, name)
        )
        if weak is None:
            return None
        why = weak.reason(language).rstrip(". ")
        if language == "fr":
            return f"est trop facile à deviner : {why}"
        return f"is too easy to guess: {why}"
    english, french = _MESSAGES[reason]
    return french if language == "fr" else english


def _refusal(password: str, email: str | None, name: str | None) -> str | None:
    if len(password) < MIN_PASSWORD_LENGTH:
        return "short"
    if len(password) > MAX_PASSWORD_LENGTH:
        return "long"
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in password):
        return "control"
    distinct = len(set(password))
    if distinct == 1:
        return "one"
    if distinct < 4:
        return "few"
    plain = _plain(password).strip()
    personal: set[str] = set()
    if email:
        address = _plain(email).strip()
        personal.update({address, address.partition("@")[0]})
    if name:
        full = _plain(name).strip()
        personal.update({full, full.replace(" ", "")})
    personal.discard("")
    if plain in personal or (email and _plain(email).strip() in plain):
        return "email"
    for run in _RUNS:
        if plain in run or plain in run[::-1]:
            return "run"
    core = re.sub(r"[\W\d_]+", "", plain)
    if core in _COMMON:
        return "common"
    return None


# ------------------------------------------------------------------------------------------
# TOTP


def new_totp_secret() -> str:
    """A new TOTP secret: 32 base32 characters (160 bits)."""
    return pyotp.random_base32(length=32)


def totp_uri(email: str, secret: str, issuer: str = TOTP_ISSUER) -> str:
    """The `otpauth://totp/<issuer>:<email>?secret=…&issuer=…` provisioning URI."""
    return pyotp.TOTP(secret).provisioning_uri(name=email, issuer_name=issuer)


_CODE_SEPARATORS = re.compile(r"[\s\-\u00a0\u2009\u202f]+")


def totp_step(secret: str, code: str, at: datetime) -> int | None:
    """The 30-second time step whose TOTP of `secret` is `code`, at `at` or one step either
    side; None when it is none of them (or the code or secret is garbled). Spaces and
    dashes in the code are ignored. The caller accepts a step once (`claim_totp_step`)."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("`at` must be an aware datetime")
    digits = _CODE_SEPARATORS.sub("", code or "")
    if len(digits) != 6 or not digits.isascii() or not digits.isdigit():
        return None
    try:
        totp = pyotp.TOTP(secret)
        now_step = int(at.timestamp()) // totp.interval
        for step in range(now_step - TOTP_VALID_WINDOW, now_step + TOTP_VALID_WINDOW + 1):
            if hmac.compare_digest(totp.at(step * totp.interval), digits):
                return step
    except (ValueError, TypeError):  # a garbled secret (binascii.Error is a ValueError)
        return None
    return None


def verify_totp(secret: str, code: str, at: datetime) -> bool:
    """True if `code` is the TOTP of `secret` at `at` or one 30-second step either side."""
    return totp_step(secret, code, at) is not None


# ------------------------------------------------------------------------------------------
# Roles


def can_assign_others(role: str) -> bool:
    """Whether this role may assign a conversation to someone else: every role."""
    return role in ("agent", "supervisor", "admin")


def can_export(role: str) -> bool:
    """Whether this role may export conversations (CSV): supervisors and admins."""
    return role in ("supervisor", "admin")


def can_view_audit(role: str) -> bool:
    """Whether this role may read the audit log (of its scope): supervisors and admins."""
    return role in ("supervisor", "admin")


def can_manage_users(role: str) -> bool:
    """Whether this role may add, change and disable accounts: admins."""
    return role == "admin"
