"""The outbox rows' payloads, typed: what the flows queue and the dispatcher sends.

Each is stored as JSON in `outbox.payload` (the keys below are the stored format; rows
queued by older versions read back the same way). Emails are described by
`gateway.rules.email_payload.from_payload` (a `ResidentEmail` or an `AgentNotice`); an
SMS part by `SmsPayload`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SmsPayload:
    """One SMS part of an agent's reply: `body` to `to` (E.164), part `part` of `parts`,
    for the stored message `message_id` of `conversation_id`, written by `agent`;
    `queued_at` (ISO 8601) measures reply-to-SMS latency."""

    to: str
    body: str
    conversation_id: int | None = None
    message_id: int | None = None
    part: int = 1
    parts: int = 1
    agent: str = ""
    queued_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "reply",
            "to": self.to,
            "body": self.body,
            "message_id": self.message_id,
            "conversation_id": self.conversation_id,
            "part": self.part,
            "parts": self.parts,
            "agent": self.agent,
            "queued_at": self.queued_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SmsPayload:
        message_id, conversation_id = data.get("message_id"), data.get("conversation_id")
        return cls(
            to=str(data["to"]),
            body=str(data["body"]),
            conversation_id=int(conversation_id) if conversation_id is not None else None,
            message_id=int(message_id) if message_id is not None else None,
            part=int(data.get("part", 1)),
            parts=int(data.get("parts", 1)),
            agent=str(data.get("agent") or ""),
            queued_at=str(data["queued_at"]) if data.get("queued_at") else None,
        )
