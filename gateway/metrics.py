"""Prometheus metrics, one registry per gateway (no module-level globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """The gateway's counters and histograms, registered on their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.texts_in = Counter(
            "sms311_texts_in", "Inbound texts accepted by the webhook", ["kind"], registry=r
        )
        self.texts_by_municipality = Counter(
            "sms311_texts_in_by_municipality",
            "Texts emailed to a municipality (held ones counted when released)",
            ["municipality"], registry=r,
        )
        self.dialogue_steps = Counter(
            "sms311_dialogue_steps",
            "What the webhook did with a text: queued (for the worker), delivered, held (asking), "
            "answered, fallback",
            ["step"], registry=r,
        )
        self.webhook_rejected = Counter(
            "sms311_webhook_rejected", "Webhook requests refused", ["reason"], registry=r
        )
        self.webhook_seconds = Histogram(
            "sms311_webhook_seconds",
            "Time to validate, commit and answer an inbound webhook",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.emails_sent = Counter("sms311_emails_sent", "Emails handed to SMTP", registry=r)
        self.outbox_retries = Counter(
            "sms311_outbox_retries", "Outbox deliveries that failed and will be retried",
            ["kind"], registry=r,
        )
        self.outbox_parked = Counter(
            "sms311_outbox_parked", "Outbox rows parked after failing for good", ["kind"],
            registry=r,
        )
        self.outbox_depth = Gauge(
            "sms311_outbox_depth", "Outbox rows waiting to be sent", registry=r
        )
        self.outbox_oldest_seconds = Gauge(
            "sms311_outbox_oldest_seconds", "Age of the oldest waiting outbox row", registry=r
        )
        self.failed_replies = Gauge(
            "sms311_failed_replies",
            "Reply emails not texted and kept in the Failed list, not resolved (sms311 failed)",
            registry=r,
        )
        self.texts_out = Counter(
            "sms311_texts_out", "SMS handed to the provider", ["outcome"], registry=r
        )
        self.replies_read = Counter(
            "sms311_replies_read", "Reply emails read, by disposition", ["outcome"], registry=r
        )
        self.delivery_status = Counter(
            "sms311_delivery_status", "Status callbacks received", ["status"], registry=r
        )
        self.reply_to_sms_seconds = Histogram(
            "sms311_reply_to_sms_seconds",
            "From an agent's reply being read to its SMS being accepted by the provider",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=r,
        )
        self.text_to_email_seconds = Histogram(
            "sms311_text_to_email_seconds",
            "From a text's arrival to its email being accepted by the mail server",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=r,
        )
