"""The console's pages and actions (blueprint "console", under `/console`).

Every view that touches a conversation looks it up through `ConsoleTx.conversation(id,
scope)`: a conversation outside the user's municipalities does not exist for them (404),
whatever the URL. Actions are POST forms with a CSRF token (plain forms that work without
JavaScript; htmx only adds live refresh, the segment counter and presence), each recorded
in the audit log in the same transaction as the change it makes.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import secrets
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from babel.dates import format_datetime as babel_datetime
from babel.dates import format_timedelta as babel_timedelta
from flask import (
    Blueprint,
    Response,
    abort,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.typing import ResponseReturnValue
from flask_babel import get_locale
from flask_babel import gettext as _
from flask_login import current_user
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from gateway.flows.agent_reply import QueuedReply, prepare_text, queue_reply
from gateway.logs import mask_phone
from gateway.rules import accounts
from gateway.rules.municipalities import DEFAULT_TIMEZONE, Municipality
from gateway.rules.resident_email import media_filename
from gateway.rules.thread import format_national
from gateway.store import Conversation, StoreUnavailable
from gateway.store.console import LIST_FILTERS, ConsoleTx, ListFilter, NotTextedReply, User
from gateway.web import media as media_headers
from gateway.web.console import auth, display
from gateway.web.console.context import ConsoleUser, is_htmx, login_required, now, remote_addr, user
from gateway.web.extension import current_gateway as gateway

log = logging.getLogger(__name__)

blueprint = Blueprint(
    "console",
    __name__,
    url_prefix="/console",
    template_folder="../templates",
    static_folder="../static",
    static_url_path="/static",
)

MAX_NOTE_CHARS = 4000
MAX_REPLY_CHARS = 8000  # far beyond one SMS; the reply path shortens and tells the agent

blueprint.add_url_rule("/login", "login", auth.login, methods=["GET", "POST"])
blueprint.add_url_rule("/login/code", "login_code", auth.login_code, methods=["GET", "POST"])
blueprint.add_url_rule("/logout", "logout", login_required(auth.logout), methods=["POST"])
blueprint.add_url_rule("/password", "password", login_required(auth.password),
                       methods=["GET", "POST"])
blueprint.add_url_rule("/language", "language", auth.language, methods=["POST"])

_OPEN_ENDPOINTS = frozenset(
    {"console.login", "console.login_code", "console.static", "console.language",
     "console.logout", "console.password"}
)


@blueprint.before_request
def _password_first() -> Response | None:
    """An account with a one-time password must choose its own before anything else."""
    who = current_user
    if (
        isinstance(who, ConsoleUser)
        and who.account.must_change_password
        and request.endpoint not in _OPEN_ENDPOINTS
    ):
        return redirect(url_for("console.password"))  # type: ignore[return-value]
    return None


@blueprint.errorhandler(StoreUnavailable)
def _store_down(exc: StoreUnavailable) -> tuple[str, int]:
    log.warning("console: the database is unavailable: %s", exc)
    return render_template("console/error.html", code=503,
                           message=_("The database is unavailable; try again in a moment.")), 503


_ERRORS = {
    400: lambda: _("This request could not be understood. Reload the page and try again."),
    403: lambda: _("Your role does not allow this."),
    404: lambda: _("There is no such page, or it is not one of your municipalities."),
    405: lambda: _("This request could not be understood. Reload the page and try again."),
    502: lambda: _("The picture could not be fetched from the SMS provider."),
}


def _error_page(exc: HTTPException) -> ResponseReturnValue:
    """Console errors as console pages (translated, styled, same headers); htmx gets the
    status alone."""
    code = exc.code or 500
    if is_htmx():
        return Response(status=code)
    if isinstance(exc, CSRFError):
        message = _("The form had expired or did not come from the console. Reload the page "
                    "and try again.")
    else:
        message = _ERRORS.get(code, lambda: str(exc.description))()
    return render_template("console/error.html", code=code, message=message), code


for _code in _ERRORS:
    blueprint.register_error_handler(_code, _error_page)


@blueprint.app_template_test("inline_image")
def _inline_image(content_type: str | None) -> bool:
    return media_headers.is_inline_image(content_type)


@blueprint.app_template_filter("national")
def _national(phone: str) -> str:
    return format_national(phone, gateway().settings.sms.default_region)


@blueprint.app_template_filter("when")
def _when(value: datetime | None, timezone: str = DEFAULT_TIMEZONE) -> str:
    if value is None:
        return ""
    return babel_datetime(value, "medium", tzinfo=ZoneInfo(timezone), locale=str(get_locale()))


@blueprint.app_template_filter("duration")
def _duration(value: timedelta | None) -> str:
    if value is None:
        return ""
    return babel_timedelta(value, threshold=1.1, locale=str(get_locale()))


@blueprint.context_processor
def _common() -> dict[str, Any]:
    who = current_user
    account = who.account if isinstance(who, ConsoleUser) else None
    return {
        "me": account,
        "locale": str(get_locale()),
        "poll_seconds": gateway().settings.console.poll_seconds,
        "can_export": bool(account and accounts.can_export(account.role)),
        "can_audit": bool(account and accounts.can_view_audit(account.role)),
        "municipality_label": _municipality_label,
        "timezone_of": _timezone_of,
    }


def _whole(value: str) -> int | None:
    """A small non-negative whole number from a query string, or None ("²" is not one)."""
    if value.isascii() and value.isdigit() and len(value) <= 18:
        return int(value)
    return None


def _municipality(municipality_id: str | None) -> Municipality | None:
    return gateway().directory().get(municipality_id) if municipality_id else None


def _municipality_label(municipality_id: str | None) -> str:
    municipality = _municipality(municipality_id)
    if municipality is None:
        return _("Unknown municipality") if municipality_id is None else municipality_id
    name = municipality.name_fr if str(get_locale()) == "fr" and municipality.name_fr else None
    return f"{name or municipality.name}, {municipality.province}"


def _timezone(conversation: Conversation) -> str:
    return _timezone_of(conversation.municipality_id)


def _timezone_of(municipality_id: str | None) -> str:
    """Times are shown in the municipality's own time zone (Toronto's when unknown)."""
    municipality = _municipality(municipality_id)
    if municipality is None:
        return DEFAULT_TIMEZONE
    return municipality.timezone


MAX_ID = 2**63 - 1  # the widest id either database stores


def _in_scope(tx: ConsoleTx, conversation_id: int) -> Conversation:
    if not 0 < conversation_id <= MAX_ID:
        abort(404)
    conversation = tx.conversation(conversation_id, user().scope)
    if conversation is None:
        abort(404)
    return conversation


# -- the list ----------------------------------------------------------------------------


def _list_args() -> tuple[ListFilter, str, str | None]:
    which = request.args.get("filter", "open")
    if which not in LIST_FILTERS:
        which = "open"
    query = display.clean(request.args.get("q") or "", limit=200)
    cursor = request.args.get("cursor") or None
    return which, query, cursor  # type: ignore[return-value]


def _list_context(tx: ConsoleTx) -> dict[str, Any]:
    account = user()
    which, query, cursor = _list_args()
    listing = functools.partial(tx.list_conversations, account.scope, which,
                                user_id=account.id, user_email=account.email, query=query)
    try:
        page = listing(cursor=cursor)
    except ValueError:  # a cursor garbled by hand (or from another version): page 1
        cursor = None
        page = listing()
    counts = tx.counts(account.scope, user_id=account.id, user_email=account.email)
    at = now()
    rows = [
        {
            "row": row,
            "waiting": display.waited(display.waiting_since(row), at),
        }
        for row in page.rows
    ]
    signature = repr(([(r.id, r.last_activity_at, r.unread, r.status, r.agent_address,
                        r.opted_out) for r in page.rows], sorted(counts.items()),
                      at.replace(second=0, microsecond=0)))
    version = hashlib.sha256(signature.encode()).hexdigest()[:16]
    return {
        "which": which,
        "query": query,
        "cursor": cursor,
        "page": page,
        "rows": rows,
        "counts": counts,
        "filters": LIST_FILTERS,
        "version": version,
    }


@blueprint.get("/")
@login_required
def index() -> Response:
    return redirect(url_for("console.conversations"))  # type: ignore[return-value]


@blueprint.get("/conversations")
@login_required
def conversations() -> str:
    with gateway().console.reading() as tx:
        context = _list_context(tx)
    return render_template("console/conversations.html", **context)


@blueprint.get("/conversations/live")
@login_required
def conversations_live() -> Response | str:
    with gateway().console.reading() as tx:
        context = _list_context(tx)
    if request.args.get("v") == context["version"]:
        return Response(status=204)
    return render_template("console/_list.html", **context)


# -- one conversation --------------------------------------------------------------------

_WHY_NOT_TEXTED = {
    "below_signature": lambda: _("the answer was below the signature line"),
    "empty": lambda: _("nothing was left once quotes and signature were cut"),
    "not_agent": lambda: _("the sender is not one of the agents who may answer this "
                           "municipality"),
    "unroutable": lambda: _("it did not answer any conversation"),
    "unreadable": lambda: _("it could not be read (binary data or the wrong character set)"),
    "not_authenticated": lambda: _("its sender could not be authenticated (the From address "
                                   "may be forged)"),
}


def _not_texted(reply: NotTextedReply) -> str:
    """The timeline's sentence for a reply email that was not texted: its sender and why
    (one short phrase per `why`, a generic one otherwise), never the email's text."""
    why = display.why_not_texted(reply)
    phrase = _WHY_NOT_TEXTED[why]() if why is not None else _("it could not be handled")
    if reply.sender:
        return str(_("Email reply from %(sender)s was not texted: %(why)s",
                     sender=reply.sender, why=phrase))
    return str(_("An email reply was not texted: %(why)s", why=phrase))


def _conversation_context(tx: ConsoleTx, conversation: Conversation) -> dict[str, Any]:
    account = user()
    at = now()
    resident = tx.core.get_resident(conversation.phone)
    notes = tx.notes_of(conversation.id)
    messages = tx.messages(conversation.id)
    failed = tx.failed_replies_of(conversation.id, account.scope)
    items = display.timeline(messages, notes, failed)
    since = at - timedelta(seconds=gateway().settings.console.presence_seconds)
    others = tx.presence(conversation.id, since=since, excluding_user=account.id)
    colleagues = tx.users_of(conversation.municipality_id) if conversation.municipality_id else []
    names = {u.email: u.name for u in colleagues}
    version = tx.timeline_version(conversation.id) + "|" + ",".join(
        f"{p.user_id}:{p.state}" for p in others
    ) + "|" + ",".join(f"{f.id}:{f.why}" for f in failed)  # (a retry kept with another why)
    municipality = _municipality(conversation.municipality_id)
    return {
        "conversation": conversation,
        "resident": resident,
        "items": items,
        "others": others,
        "names": names,
        "timezone": _timezone(conversation),
        "municipality": municipality,
        "version": hashlib.sha256(version.encode()).hexdigest()[:16],
        "assignable": colleagues,
        "canned": municipality.canned_replies if municipality else (),
        "failed_statuses": display.FAILED_STATUSES,
        "not_texted": _not_texted,
        "retry_outcome": display.retry_outcome,
    }


@blueprint.get("/conversations/<int:conversation_id>")
@login_required
def conversation(conversation_id: int) -> str:
    account = user()
    at = now()
    with gateway().console.transaction() as tx:
        found = _in_scope(tx, conversation_id)
        tx.mark_read(account.id, found.id, at)
        tx.touch_presence(account.id, found.id, "viewing", at)
        tx.audit(account.id, account.email, "read", at=at, conversation_id=found.id,
                 municipality_id=found.municipality_id, remote_addr=remote_addr())
    with gateway().console.reading() as tx:
        context = _conversation_context(tx, found)
    return render_template(
        "console/conversation.html",
        request_key=secrets.token_urlsafe(24),
        counter=display.count(""),
        **context,
    )


@blueprint.get("/conversations/<int:conversation_id>/live")
@login_required
def conversation_live(conversation_id: int) -> Response | str:
    """The live part of the conversation page: 204 when nothing changed. Each poll renews
    the viewer's presence; the read mark moves only when there is something new to read."""
    account = user()
    at = now()
    with gateway().console.reading() as tx:
        found = _in_scope(tx, conversation_id)
        context = _conversation_context(tx, found)
    changed = request.args.get("v") != context["version"]
    try:
        with gateway().console.transaction() as tx:
            tx.touch_presence(account.id, found.id, "viewing", at)
            if changed:
                tx.mark_read(account.id, found.id, at)
    except KeyError:  # erased (a privacy request) since the read
        abort(404)
    if not changed:
        return Response(status=204)
    return render_template("console/_timeline.html", **context)


@blueprint.post("/conversations/<int:conversation_id>/count")
@login_required
def count(conversation_id: int) -> str:
    """The live segment counter (htmx, as the agent types); also says "replying"."""
    account = user()
    text = (request.form.get("text") or "")[:MAX_REPLY_CHARS]
    with gateway().console.transaction() as tx:
        found = _in_scope(tx, conversation_id)
        tx.touch_presence(account.id, found.id, "replying" if text.strip() else "viewing", now())
    return render_template("console/_counter.html", counter=display.count(text))


@blueprint.get("/conversations/<int:conversation_id>/canned")
@login_required
def canned(conversation_id: int) -> str:
    """The reply box filled with a canned reply (htmx swaps it in)."""
    with gateway().console.reading() as tx:
        found = _in_scope(tx, conversation_id)
    municipality = _municipality(found.municipality_id)
    replies = municipality.canned_replies if municipality else ()
    index = request.args.get("canned", "")
    text = ""
    if _whole(index) is not None and int(index) < len(replies):
        text = replies[int(index)].text
    return render_template("console/_reply_box.html", conversation=found, text=text,
                           counter=display.count(text))


@blueprint.post("/conversations/<int:conversation_id>/reply")
@login_required
def reply(conversation_id: int) -> Response:
    account = user()
    text = prepare_text(request.form.get("text") or "")
    key = "".join(c for c in (request.form.get("request_key") or "")[:64]
                  if c.isascii() and (c.isalnum() or c in "-_"))
    target = url_for("console.conversation", conversation_id=conversation_id)
    if not text:
        with gateway().console.reading() as tx:
            _in_scope(tx, conversation_id)
        flash(_("Write a reply before sending."), "error")
        return redirect(target)  # type: ignore[return-value]
    if len(text) > MAX_REPLY_CHARS:
        flash(_("This reply is too long to text."), "error")
        return redirect(target)  # type: ignore[return-value]
    at = now()
    settings = gateway().settings
    try:
        with gateway().console.transaction() as tx:
            found = _in_scope(tx, conversation_id)
            if key and not tx.claim_request(key, account.id, at):
                flash(_("This reply was already sent."), "info")
                return redirect(target)  # type: ignore[return-value]
            municipality = _municipality(found.municipality_id)
            mailbox = municipality.mailbox if municipality else settings.fallback_mailbox
            queued = queue_reply(tx.core, settings, found, agent=account.email, text=text,
                                 now=at, via="console", agent_name=account.name,
                                 mailbox=mailbox)
            _after_reply(tx, found, account, queued, at)
    except ValueError as exc:  # nothing was committed (nowhere to file the copy, …)
        log.warning("console: reply refused: %s", exc)
        flash(_("Not sent: %(reason)s", reason=str(exc)), "error")
        return redirect(target)  # type: ignore[return-value]
    gateway().outbox_changed()
    log.info("console: reply by user %d to %s, conversation %d", account.id,
             mask_phone(found.phone), found.id)
    if queued.opted_out:
        flash(_("Not sent: this resident texted STOP. The reply is kept in the conversation."),
              "error")
    elif queued.shortened:
        flash(_("Sent, but shortened: it was too long for a text."), "error")
    else:
        flash(_("Reply queued for sending."), "info")
    return redirect(target)  # type: ignore[return-value]


def _after_reply(
    tx: ConsoleTx, found: Conversation, account: User, queued: QueuedReply, at: datetime
) -> None:
    """The replier becomes the sticky agent (as an email reply makes its sender), and the
    reply is audited, in the reply's transaction."""
    tx.core.set_agent(found.id, account.email)
    tx.core.touch_conversation(found.id, at)
    tx.touch_presence(account.id, found.id, "viewing", at)
    tx.mark_read(account.id, found.id, at)
    tx.audit(account.id, account.email, "reply", at=at, conversation_id=found.id,
             municipality_id=found.municipality_id, remote_addr=remote_addr(),
             detail={"parts": queued.parts, "shortened": queued.shortened,
                     "opted_out": queued.opted_out})


@blueprint.post("/conversations/<int:conversation_id>/note")
@login_required
def note(conversation_id: int) -> Response:
    account = user()
    body = display.clean(request.form.get("note") or "", multiline=True, limit=MAX_NOTE_CHARS)
    at = now()
    with gateway().console.transaction() as tx:
        found = _in_scope(tx, conversation_id)
        if body:
            tx.add_note(found.id, account.id, body, at)
            tx.audit(account.id, account.email, "note", at=at, conversation_id=found.id,
                     municipality_id=found.municipality_id, remote_addr=remote_addr())
    if body:
        flash(_("Note added (never texted)."), "info")
    else:
        flash(_("Write a note before adding it."), "error")
    return redirect(url_for("console.conversation", conversation_id=conversation_id))  # type: ignore[return-value]


@blueprint.post("/conversations/<int:conversation_id>/assign")
@login_required
def assign(conversation_id: int) -> Response:
    """Assign to me / to another agent / to nobody: the sticky agent the email side uses
    (the resident's next texts are emailed to that agent, the city mailbox in copy)."""
    account = user()
    wanted = (request.form.get("agent") or "").strip().lower()
    at = now()
    with gateway().console.transaction() as tx:
        found = _in_scope(tx, conversation_id)
        if wanted == "me":
            wanted = account.email
        # Anyone who can see the conversation's municipality (an admin, for themselves, any).
        allowed = {u.email for u in tx.users_of(found.municipality_id)} if (
            found.municipality_id) else set()
        if wanted and wanted not in allowed and not (
            wanted == account.email and account.role == "admin"
        ):
            abort(400)
        if wanted and wanted != account.email and not accounts.can_assign_others(account.role):
            abort(403)
        tx.core.set_agent(found.id, wanted or None)
        tx.audit(account.id, account.email, "assign", at=at, conversation_id=found.id,
                 municipality_id=found.municipality_id, remote_addr=remote_addr(),
                 detail={"to": wanted or None, "from": found.agent_address})
    flash(_("Assigned to %(name)s.", name=wanted) if wanted else _("Unassigned."), "info")
    return redirect(url_for("console.conversation", conversation_id=conversation_id))  # type: ignore[return-value]


@blueprint.post("/conversations/<int:conversation_id>/close")
@login_required
def close(conversation_id: int) -> Response:
    return _set_status(conversation_id, "close")


@blueprint.post("/conversations/<int:conversation_id>/reopen")
@login_required
def reopen(conversation_id: int) -> Response:
    return _set_status(conversation_id, "reopen")


def _set_status(conversation_id: int, action: str) -> Response:
    account = user()
    at = now()
    with gateway().console.transaction() as tx:
        found = _in_scope(tx, conversation_id)
        if action == "close":
            tx.core.close_conversation(found.id, at)
        else:
            tx.reopen_conversation(found.id, at)
        tx.audit(account.id, account.email, action, at=at, conversation_id=found.id,
                 municipality_id=found.municipality_id, remote_addr=remote_addr())
    flash(_("Conversation closed.") if action == "close" else _("Conversation reopened."),
          "info")
    return redirect(url_for("console.conversation", conversation_id=conversation_id))  # type: ignore[return-value]


@blueprint.get("/conversations/<int:conversation_id>/media/<int:message_id>/<int:index>")
@login_required
def media(conversation_id: int, message_id: int, index: int) -> Response:
    """An MMS picture, fetched from the provider with the account's credentials (the
    browser never sees them), only for a conversation in the user's scope."""
    with gateway().console.reading() as tx:
        found = _in_scope(tx, conversation_id)
        message = next((m for m in tx.messages(found.id) if m.id == message_id), None)
    if message is None or index >= len(message.media):
        abort(404)
    item = message.media[index]
    try:
        content_type, data = gateway().provider.fetch_media(item["url"])
    except Exception:  # the provider is down or the media expired
        log.warning("console: media of message %d could not be fetched", message_id)
        abort(502)
    declared = content_type or item.get("content_type")
    response = Response(data)
    # Only raster images inline; anything else a sandboxed octet-stream download.
    media_headers.harden(response, declared, media_filename(index + 1, declared or ""))
    response.headers["Cache-Control"] = "private, max-age=3600"
    return response


# -- supervisors: export, audit -------------------------------------------------------------


def _export_context(conversation_id: int) -> tuple[Conversation, dict[str, Any]]:
    account = user()
    at = now()
    with gateway().console.transaction() as tx:
        found = _in_scope(tx, conversation_id)  # 404 outside the scope, whatever the role
        if not accounts.can_export(account.role):
            abort(403)
        tx.audit(account.id, account.email, "export", at=at, conversation_id=found.id,
                 municipality_id=found.municipality_id, remote_addr=remote_addr(),
                 detail={"format": "csv" if request.path.endswith(".csv") else "print"})
    with gateway().console.reading() as tx:
        context = _conversation_context(tx, found)
    return found, context


@blueprint.get("/conversations/<int:conversation_id>/export")
@login_required
def export(conversation_id: int) -> str:
    _, context = _export_context(conversation_id)
    return render_template("console/export.html", exported_at=now(), **context)


@blueprint.get("/conversations/<int:conversation_id>/export.csv")
@login_required
def export_csv(conversation_id: int) -> Response:
    found, context = _export_context(conversation_id)
    text = display.export_csv(context["items"], resident=_national(found.phone),
                              names=context["names"], describe=_not_texted)
    response = Response(text, content_type="text/csv; charset=utf-8")
    response.headers["Content-Disposition"] = (
        f'attachment; filename="conversation-{found.id}.csv"'
    )
    return response


@blueprint.get("/audit")
@login_required
def audit() -> str:
    account = user()
    if not accounts.can_view_audit(account.role):
        abort(403)
    before = request.args.get("before", "")
    conversation_id = request.args.get("conversation", "")
    with gateway().console.reading() as tx:
        entries = tx.audit_log(
            account.scope,
            conversation_id=_whole(conversation_id),
            before_id=_whole(before),
            limit=100,
        )
    return render_template("console/audit.html", entries=entries,
                           conversation_filter=conversation_id)


__all__ = ["blueprint"]
