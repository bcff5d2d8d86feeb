"""sms311: an SMS-to-email gateway for municipal 311 services."""

__version__ = "0.1.0"
