"""Console accounts: who may sign in, with which role, for which municipalities.

Contract
    `UsersTx` is the accounts part of `ConsoleTx` (in the caller's transaction): add, read
    and change accounts. Emails are stored stripped and lower-cased (case-insensitive
    look-ups); `municipalities` are kept sorted; a role is one of `ROLES` (`ValueError`
    otherwise); a second account for one email raises `UserExists`. The setters raise
    `KeyError` for a user that does not exist. Password hashing and TOTP checks are the
    caller's (`gateway.rules.accounts`): the store keeps what it is given.

    Sessions: each account has a `session_epoch`, carried in its console session cookies.
    `set_password`, `set_disabled` (either way: disable then enable revives no cookie) and
    `end_sessions` (signing out) raise it, so every session opened before ends on every
    instance; `session_epoch(user_id)` reads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from gateway.store.console.common import ROLES, ConsoleTxBase, Role, User, UserExists
from gateway.store.engine import is_unique_violation
from gateway.store.rows import aware
from gateway.store.schema import user_municipalities, users


def _email(email: str) -> str:
    if not isinstance(email, str) or not email.strip():
        raise ValueError("an account needs an email address")
    return email.strip().lower()


def _role(role: str) -> Role:
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, not {role!r}")
    return role


def _municipality_ids(municipalities: Sequence[str]) -> list[str]:
    if isinstance(municipalities, str):  # a str is a Sequence[str] too
        raise TypeError("municipalities: expected a sequence of ids, not one string")
    ids = sorted({m.strip() for m in municipalities})
    if any(not m for m in ids):
        raise ValueError("a municipality id must be a non-empty string")
    return ids


def _user(row: sa.RowMapping, municipalities: Sequence[str]) -> User:
    return User(
        id=int(row["id"]),
        email=row["email"],
        name=row["name"],
        role=row["role"],
        municipalities=tuple(sorted(municipalities)),
        password_hash=row["password_hash"],
        totp_secret=row["totp_secret"],
        disabled=bool(row["disabled"]),
        must_change_password=bool(row["must_change_password"]),
        language=row["language"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


class UsersTx(ConsoleTxBase):
    """The accounts part of `ConsoleTx` (see the module docstring)."""

    def _users(self, *where: sa.ColumnElement[bool], by: str = "email") -> list[User]:
        order = (users.c.name, users.c.email) if by == "name" else (users.c.email,)
        rows = self._exec(sa.select(users).where(*where).order_by(*order)).mappings().all()
        if not rows:
            return []
        ids = [int(row["id"]) for row in rows]
        stmt = sa.select(user_municipalities.c.user_id, user_municipalities.c.municipality_id)
        if len(ids) <= 500:
            stmt = stmt.where(user_municipalities.c.user_id.in_(ids))
        cities: dict[int, list[str]] = {}
        for link in self._exec(stmt).mappings():
            cities.setdefault(int(link["user_id"]), []).append(str(link["municipality_id"]))
        return [_user(row, cities.get(int(row["id"]), [])) for row in rows]

    def add_user(
        self,
        email: str,
        name: str,
        role: Role,
        municipalities: Sequence[str],
        password_hash: str,
        *,
        must_change_password: bool,
        at: datetime,
    ) -> User:
        """Create an account (email lower-cased and stripped). Raises `UserExists`, and
        `ValueError` for an unknown role (or an empty email or name).

        A `UserExists` raised by the database (a concurrent `add_user` of the same email
        won) leaves the transaction unusable, like `DuplicateWebhook`."""
        address = _email(email)
        role = _role(role)
        cities = _municipality_ids(municipalities)
        if not isinstance(name, str) or not name.strip():
            raise ValueError("an account needs a name")
        moment = aware(at, "at")
        if self.user_by_email(address) is not None:
            raise UserExists(address)
        stmt = (
            users.insert()
            .values(
                email=address,
                name=name.strip(),
                role=role,
                password_hash=password_hash,
                totp_secret=None,
                disabled=False,
                must_change_password=bool(must_change_password),
                language=None,
                created_at=moment,
                updated_at=moment,
            )
            .returning(users.c.id)
        )
        try:
            user_id = int(self._exec(stmt).scalar_one())
        except sa.exc.IntegrityError as exc:
            if is_unique_violation(exc):
                raise UserExists(address) from exc
            raise
        self._insert_municipalities(user_id, cities)
        user = self.get_user(user_id)
        assert user is not None
        return user

    def _insert_municipalities(self, user_id: int, cities: Sequence[str]) -> None:
        if cities:
            self._exec(
                user_municipalities.insert(),
                [{"user_id": user_id, "municipality_id": city} for city in cities],  # type: ignore[arg-type]
            )

    def get_user(self, user_id: int) -> User | None:
        found = self._users(users.c.id == user_id)
        return found[0] if found else None

    def user_by_email(self, email: str) -> User | None:
        """Case-insensitive."""
        if not isinstance(email, str) or not email.strip():
            return None
        found = self._users(users.c.email == email.strip().lower())
        return found[0] if found else None

    def list_users(self) -> list[User]:
        """Every account, by email."""
        return self._users()

    def users_of(self, municipality_id: str) -> list[User]:
        """Enabled accounts that can see this municipality (its agents and supervisors, and
        every admin), by name: the "assign to" choices."""
        works_there = (
            sa.select(user_municipalities.c.user_id)
            .where(
                user_municipalities.c.user_id == users.c.id,
                user_municipalities.c.municipality_id == municipality_id,
            )
            .exists()
        )
        return self._users(
            users.c.disabled.is_(False), sa.or_(users.c.role == "admin", works_there), by="name"
        )

    def _update_user(self, user_id: int, at: datetime, **values: Any) -> None:
        moment = aware(at, "at")
        result = self._exec(
            users.update().where(users.c.id == user_id).values(updated_at=moment, **values)
        )
        if result.rowcount != 1:
            raise KeyError(f"no user {user_id}")

    def set_password(
        self,
        user_id: int,
        password_hash: str,
        *,
        must_change_password: bool,
        at: datetime,
        end_sessions: bool = True,
    ) -> None:
        """A new password ends every session of the account (its epoch goes up), unless
        `end_sessions=False` (the same password re-hashed with today's parameters).
        Raises KeyError if there is no such user (as do the other setters)."""
        ended = {"session_epoch": users.c.session_epoch + 1} if end_sessions else {}
        self._update_user(
            user_id,
            at,
            password_hash=password_hash,
            must_change_password=bool(must_change_password),
            **ended,
        )

    def session_epoch(self, user_id: int) -> int | None:
        """The account's session epoch (None: no such account)."""
        stmt = sa.select(users.c.session_epoch).where(users.c.id == user_id)
        epoch = self._exec(stmt).scalar_one_or_none()
        return None if epoch is None else int(epoch)

    def end_sessions(self, user_id: int, at: datetime) -> int:
        """End every console session of the account (signing out ends them all); returns
        the new epoch. KeyError if there is no such user."""
        self._update_user(user_id, at, session_epoch=users.c.session_epoch + 1)
        epoch = self.session_epoch(user_id)
        assert epoch is not None
        return epoch

    def set_name(self, user_id: int, name: str, at: datetime) -> None:
        name = name.strip()
        if not name:
            raise ValueError("a user's name cannot be empty")
        self._update_user(user_id, at, name=name)

    def set_disabled(self, user_id: int, disabled: bool, at: datetime) -> None:
        """Disabling or enabling ends every session of the account."""
        self._update_user(
            user_id, at, disabled=bool(disabled), session_epoch=users.c.session_epoch + 1
        )

    def set_totp(self, user_id: int, secret: str | None, at: datetime) -> None:
        self._update_user(user_id, at, totp_secret=secret, totp_last_step=None)

    def claim_totp_step(self, user_id: int, step: int) -> bool:
        """Accept a TOTP code of time step `step` for this account, once: True (and the step
        remembered) unless a code of this step or a later one was accepted already."""
        u = users.c
        result = self._exec(
            users.update()
            .where(u.id == user_id, sa.or_(u.totp_last_step.is_(None), u.totp_last_step < step))
            .values(totp_last_step=step)
        )
        return bool(result.rowcount == 1)

    def set_language(self, user_id: int, language: str | None, at: datetime) -> None:
        """`language`: "en", "fr", or None (follow the browser)."""
        if language is not None and (not isinstance(language, str) or not 0 < len(language) <= 8):
            raise ValueError(f"not a language code: {language!r}")
        self._update_user(user_id, at, language=language)

    def set_municipalities(self, user_id: int, municipalities: Sequence[str], at: datetime) -> None:
        cities = _municipality_ids(municipalities)
        self._update_user(user_id, at)
        self._exec(user_municipalities.delete().where(user_municipalities.c.user_id == user_id))
        self._insert_municipalities(user_id, cities)

    def set_role(self, user_id: int, role: Role, at: datetime) -> None:
        self._update_user(user_id, at, role=_role(role))
