"""`python -m smarttasks.core.messaging relay`: the outbox relay as its own process."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import uvloop

from smarttasks.core.logging import configure_logging
from smarttasks.core.messaging.relay import run_relay
from smarttasks.core.messaging.settings import MessagingSettings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m smarttasks.core.messaging",
        description="Event backbone processes, configured from SMARTTASKS_* variables.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("relay", help="publish the outbox tables to RabbitMQ until SIGTERM")
    parser.parse_args(argv)
    settings = MessagingSettings()
    configure_logging(json=settings.json_logs, level=settings.log_level)
    uvloop.run(run_relay(settings))  # the services run on it too, under uvicorn
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
