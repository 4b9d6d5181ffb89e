"""Composition root: the embedded all-in-one app, process entry points and the CLI."""
