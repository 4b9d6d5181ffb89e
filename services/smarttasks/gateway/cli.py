"""The `smarttasks` command: embedded mode, cluster entry points, administration."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import structlog

from smarttasks.core.logging import configure_logging

log = structlog.get_logger()

DEFAULT_DATA_DIR = ".smarttasks"
RUNNABLE = (
    "users",
    "tasks",
    "rules-api",
    "notifications",
    "operator",
    "relay",
    "gateway",
    "migrate",
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smarttasks", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run everything in one process (embedded mode)")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=8000)
    up.add_argument(
        "--data-dir",
        default=os.environ.get("SMARTTASKS_DATA_DIR", DEFAULT_DATA_DIR),
        help="where PostgreSQL data, keys and the email outbox live (default: .smarttasks)",
    )

    run = sub.add_parser("run", help="run one component against external services")
    run.add_argument("component", choices=RUNNABLE)
    run.add_argument("--host", default="0.0.0.0")  # noqa: S104 - containers listen on all
    run.add_argument("--port", type=int, default=8000)
    run.add_argument("--workers", type=int, default=1, help="worker processes (HTTP components)")

    users = sub.add_parser("users", help="manage accounts")
    users_sub = users.add_subparsers(dest="users_command", required=True)
    admin = users_sub.add_parser(
        "create-admin",
        help="create an administrator (password prompted, or from SMARTTASKS_ADMIN_PASSWORD)",
    )
    admin.add_argument("--email", required=True)
    admin.add_argument("--display-name", default="Administrator")
    admin.add_argument(
        "--data-dir", default=os.environ.get("SMARTTASKS_DATA_DIR", DEFAULT_DATA_DIR)
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "up":
        from smarttasks.gateway.embedded import run_embedded

        return run_embedded(host=args.host, port=args.port, data_dir=Path(args.data_dir))
    if args.command == "run":
        from smarttasks.gateway.processes import run_component

        return run_component(args.component, host=args.host, port=args.port, workers=args.workers)
    if args.command == "users" and args.users_command == "create-admin":
        return _create_admin(args.email, args.display_name, Path(args.data_dir))
    return 2


def _create_admin(email: str, display_name: str, data_dir: Path) -> int:
    from smarttasks.gateway.admin import create_admin

    configure_logging(json=False, level="WARNING")
    password = os.environ.get("SMARTTASKS_ADMIN_PASSWORD")
    if not password:
        if not sys.stdin.isatty():
            print("error: no terminal to prompt on; set SMARTTASKS_ADMIN_PASSWORD", file=sys.stderr)
            return 2
        password = getpass.getpass("Password for the new administrator: ")
        if password != getpass.getpass("Repeat it: "):
            print("error: the passwords differ", file=sys.stderr)
            return 2
    try:
        user_id = asyncio.run(
            create_admin(
                email=email, password=password, display_name=display_name, data_dir=data_dir
            )
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"Administrator {email} created (id {user_id}).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
