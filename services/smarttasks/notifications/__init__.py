"""The notification service: delivers requested notifications by email and signed webhook."""
