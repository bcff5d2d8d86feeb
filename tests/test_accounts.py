"""gateway.rules.accounts: password hashing, one-time passwords, the password policy, TOTP, roles."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta, timezone

import pyotp
import pytest
from argon2 import PasswordHasher

from gateway.rules.accounts import (
    MIN_PASSWORD_LENGTH,
    OTP_ALPHABET,
    can_assign_others,
    can_export,
    can_manage_users,
    can_view_audit,
    check_password_policy,
    hash_password,
    needs_rehash,
    new_one_time_password,
    new_totp_secret,
    totp_uri,
    verify_password,
    verify_totp,
)
from gateway.rules.password_strength import FRENCH, weakness

GOOD = "correct horse battery staple"

# ------------------------------------------------------------------------------------------
# Passwords


def test_hash_and_verify() -> None:
    hashed = hash_password(GOOD)
    assert hashed.startswith("$argon2id$")
    assert GOOD not in hashed
    assert verify_password(hashed, GOOD)
    assert not verify_password(hashed, GOOD + " ")
    assert not verify_password(hashed, "")


def test_hashes_are_salted() -> None:
    assert hash_password(GOOD) != hash_password(GOOD)


@pytest.mark.parametrize(
    "garbled",
    [
        "",
        "not a hash",
        "$argon2id$v=19$m=65536,t=3,p=4$garbage",
        "$2b$12$abcdefghijklmnopqrstuuA8Fq2qk1eHgHcbpEwT0Q4JR9kO1r8W",  # bcrypt
        "$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHQ$",
    ],
)
def test_verify_never_raises_on_a_garbled_hash(garbled: str) -> None:
    assert verify_password(garbled, GOOD) is False


def test_verify_handles_unicode_passwords() -> None:
    password = "Mot de passe très sûr — 🔐 ÉLÉPHANT"
    assert verify_password(hash_password(password), password)


def test_needs_rehash() -> None:
    assert needs_rehash(hash_password(GOOD)) is False
    weaker = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1).hash(GOOD)
    assert verify_password(weaker, GOOD)  # still accepted …
    assert needs_rehash(weaker) is True  # … and replaced at the next sign-in
    assert needs_rehash("garbage") is True


# ------------------------------------------------------------------------------------------
# One-time passwords


def test_one_time_password_shape() -> None:
    otp = new_one_time_password()
    assert re.fullmatch(rf"[{OTP_ALPHABET}]{{5}}(-[{OTP_ALPHABET}]{{5}}){{3}}", otp), otp
    assert not set(otp) & set("0o1li")  # nothing to misread


def test_one_time_password_entropy() -> None:
    assert len(set(OTP_ALPHABET)) == len(OTP_ALPHABET)
    assert 20 * math.log2(len(OTP_ALPHABET)) >= 80


def test_one_time_passwords_are_unique_and_use_the_whole_alphabet() -> None:
    many = [new_one_time_password() for _ in range(2000)]
    assert len(set(many)) == len(many)
    used = set("".join(many).replace("-", ""))
    assert used == set(OTP_ALPHABET)


def test_one_time_passwords_pass_the_policy() -> None:
    for _ in range(200):
        otp = new_one_time_password()
        assert check_password_policy(otp, email="dana@ottawa.example", name="Dana") is None


# ------------------------------------------------------------------------------------------
# Policy


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("short", "at least 12 characters"),
        ("a" * (MIN_PASSWORD_LENGTH - 1), "at least 12 characters"),
        ("x" * 2000, "at most"),
        ("aaaaaaaaaaaaaaaa", "single character repeated"),
        ("abababababababab", "at least 4 different characters"),
        ("dana@ottawa.example", "email address"),
        ("DANA@Ottawa.Example", "email address"),
        ("dana@ottawa.example2024", "email address"),
        ("danascully12", None),
        ("Dana Scully", "at least 12"),
        ("dana.scully.x", None),
        ("123456789012", "simple run"),
        ("qwertyuiopas", "simple run"),
        ("ZYXWVUTSRQPONM", "simple run"),
        ("Password2024!", "too common"),
        ("motdepasse123", "too common"),
        ("line one\nline two", "line breaks"),
        ("tab\there is fine?", "control characters"),
        (GOOD, None),
        ("Ottawa-Rideau-Canal-1832", None),
    ],
)
def test_password_policy(password: str, reason: str | None) -> None:
    result = check_password_policy(password, email="dana@ottawa.example", name="Dana Scully")
    if reason is None:
        assert result is None
    else:
        assert result is not None and reason in result, result


def test_password_policy_refuses_the_name_and_the_local_part() -> None:
    assert check_password_policy("danascullyx1", email="danascullyx1@ottawa.example")
    assert check_password_policy("Dana Scully Mulder", name="dana scully mulder")
    assert check_password_policy("danascullymulder", name="Dana Scully Mulder")


def test_password_policy_in_french() -> None:
    assert check_password_policy("court", language="fr") == "doit compter au moins 12 caractères"
    assert check_password_policy(GOOD, language="fr") is None


# Passwords the rules above let through, that zxcvbn (issue 15) finds easy to guess: common
# passwords with digits, keyboard walks, names, repeats. (reason in English, in French)
WEAK = [
    ("superman1234", "This is similar to a commonly used password",
     "Il ressemble à un mot de passe courant"),
    ("P@ssw0rd12345", "This is similar to a commonly used password",
     "Il ressemble à un mot de passe courant"),
    ("jennifer1985", "Common names and surnames are easy to guess",
     "Les prénoms et les noms courants sont faciles à deviner"),
    ("trustno1trustno1", 'Repeats like "abcabcabc"', "Les répétitions comme « abcabcabc »"),
    ("January2024!", "Add another word or two", "Ajoutez un mot ou deux"),
]


@pytest.mark.parametrize(("password", "english", "french"), WEAK)
def test_easy_to_guess_passwords_are_refused_and_say_why(
    password: str, english: str, french: str
) -> None:
    said = check_password_policy(password, email="dana@ottawa.example", name="Dana Scully")
    assert said is not None and said.startswith("is too easy to guess: ") and english in said
    dit = check_password_policy(password, email="dana@ottawa.example", name="Dana Scully",
                                language="fr")
    assert dit is not None and dit.startswith("est trop facile à deviner : ") and french in dit


def test_the_accounts_own_words_make_a_password_weak() -> None:
    """The same password passes for another account, not for the one it is made of."""
    password = "zbigniewkowalczyk"
    assert check_password_policy(password, email="dana@ottawa.example", name="Dana Scully") is None
    assert check_password_policy(password, email="zk@ottawa.example", name="Zbigniew Kowalczyk")
    assert check_password_policy("brzeczyszczykiewicz1", email="gb@ottawa.example") is None
    assert check_password_policy("brzeczyszczykiewicz1",  # the email's local part
                                 email="brzeczyszczykiewicz@ottawa.example")


def test_strong_passwords_pass_and_long_ones_are_judged_by_their_start() -> None:
    for password in (GOOD, "Ottawa-Rideau-Canal-1832", "a much better passphrase"):
        assert check_password_policy(password, email="dana@ottawa.example", name="Dana") is None
    assert weakness("x7Kq!" * 200) is None  # 1000 characters: no error, judged on 72
    assert weakness("superman1234" + "x7Kq!vR2#pL9" * 10) is None  # the start is not all
    weak = weakness("abcdefabcdefabcdef" * 5)
    assert weak is not None and weak.score < 3


def test_every_zxcvbn_sentence_has_its_french() -> None:
    import ast
    import inspect

    from zxcvbn import feedback

    sentences = {
        node.args[0].value
        for node in ast.walk(ast.parse(inspect.getsource(feedback)))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "_"
        and isinstance(node.args[0], ast.Constant)
    }
    assert len(sentences) >= 20, sentences
    assert sentences <= set(FRENCH), sentences - set(FRENCH)

# ------------------------------------------------------------------------------------------
# TOTP

SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
AT = datetime(2025, 3, 1, 12, 0, 15, tzinfo=UTC)


def code_at(when: datetime, secret: str = SECRET) -> str:
    return pyotp.TOTP(secret).at(int(when.timestamp()))


def test_totp_secret() -> None:
    secret = new_totp_secret()
    assert re.fullmatch(r"[A-Z2-7]{32}", secret)
    assert secret != new_totp_secret()


def test_totp_uri() -> None:
    uri = totp_uri("dana@ottawa.example", SECRET)
    assert uri.startswith("otpauth://totp/sms311:dana%40ottawa.example?")
    parsed = pyotp.parse_uri(uri)
    assert isinstance(parsed, pyotp.TOTP)
    assert parsed.secret == SECRET
    assert parsed.issuer == "sms311"
    assert "issuer=Ville" in totp_uri("a@b.example", SECRET, issuer="Ville")


def test_totp_accepts_the_current_code_and_one_step_either_side() -> None:
    assert verify_totp(SECRET, code_at(AT), AT)
    assert verify_totp(SECRET, code_at(AT - timedelta(seconds=30)), AT)
    assert verify_totp(SECRET, code_at(AT + timedelta(seconds=30)), AT)
    assert not verify_totp(SECRET, code_at(AT - timedelta(seconds=60)), AT)
    assert not verify_totp(SECRET, code_at(AT + timedelta(seconds=60)), AT)


def test_totp_other_time_zones_are_the_same_instant() -> None:
    montreal = AT.astimezone(timezone(timedelta(hours=-5)))
    assert verify_totp(SECRET, code_at(AT), montreal)


def test_totp_tolerates_spaces_and_dashes() -> None:
    code = code_at(AT)
    assert verify_totp(SECRET, f"{code[:3]} {code[3:]}", AT)
    assert verify_totp(SECRET, f" {code[:3]}-{code[3:]}\n", AT)


@pytest.mark.parametrize("code", ["", "12345", "1234567", "abcdef", "١٢٣٤٥٦"])
def test_totp_refuses_malformed_codes(code: str) -> None:
    assert verify_totp(SECRET, code, AT) is False


def test_totp_wrong_secret_and_garbled_secret() -> None:
    assert not verify_totp(new_totp_secret(), code_at(AT), AT)
    assert verify_totp("not base32 at all!", "123456", AT) is False


def test_totp_needs_an_aware_time() -> None:
    with pytest.raises(ValueError, match="aware"):
        verify_totp(SECRET, code_at(AT), AT.replace(tzinfo=None))


# ------------------------------------------------------------------------------------------
# Roles


@pytest.mark.parametrize(
    ("role", "export", "audit", "manage", "assign"),
    [
        ("agent", False, False, False, True),
        ("supervisor", True, True, False, True),
        ("admin", True, True, True, True),
        ("root", False, False, False, False),
        ("", False, False, False, False),
    ],
)
def test_roles(role: str, export: bool, audit: bool, manage: bool, assign: bool) -> None:
    assert can_export(role) is export
    assert can_view_audit(role) is audit
    assert can_manage_users(role) is manage
    assert can_assign_others(role) is assign


def test_totp_step_names_the_step_the_code_belongs_to() -> None:
    from gateway.rules.accounts import totp_step

    secret = new_totp_secret()
    at = datetime(2026, 12, 3, 12, 0, 15, tzinfo=UTC)
    step = int(at.timestamp()) // 30
    totp = pyotp.TOTP(secret)
    assert totp_step(secret, totp.at(step * 30), at) == step
    assert totp_step(secret, totp.at((step - 1) * 30), at) == step - 1  # the clock drifts
    assert totp_step(secret, totp.at((step + 1) * 30), at) == step + 1
    assert totp_step(secret, totp.at((step + 2) * 30), at) is None
    code = totp.at(step * 30)
    assert totp_step(secret, f"{code[:3]} {code[3:]}", at) == step
    assert totp_step("not base32!", code, at) is None
