"""Twilio (and Twilio-compatible APIs): REST client, webhook signature, error codes."""
