"""Shared kernel of SmartTasks: settings, logging, metrics, database, events, auth, errors, HTTP."""
