"""Throughput of the notification delivery worker: emails/s and webhooks/s."""
