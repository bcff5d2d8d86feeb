"""Which email an "email" outbox payload describes (no I/O): `from_payload`.

The outbox stores two kinds of email, told apart by `payload["type"]`: "resident"
(gateway.rules.resident_email.ResidentEmail) and "notice"
(gateway.rules.agent_notice.AgentNotice). Neither module knows the other; this one reads both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.rules.agent_notice import AgentNotice
from gateway.rules.resident_email import ResidentEmail


def from_payload(data: Mapping[str, Any]) -> ResidentEmail | AgentNotice:
    """The email an "email" outbox payload describes: an `AgentNotice` when
    data["type"] is "notice", else a `ResidentEmail` (payloads from before the
    "type" key are resident emails)."""
    if data.get("type") == "notice":
        return AgentNotice.from_dict(data)
    return ResidentEmail.from_dict(data)
