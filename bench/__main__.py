"""Run every benchmark in turn: `python -m bench` (what `make bench` does)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

SUITES = ("api", "events", "engine", "notifications", "load")


def main() -> int:
    failed = []
    for suite in SUITES:
        if importlib.util.find_spec(f"bench.{suite}.__main__") is None:
            print(f"== bench.{suite}: not present, skipped", flush=True)
            continue
        print(f"== bench.{suite}", flush=True)
        if subprocess.run([sys.executable, "-m", f"bench.{suite}"], check=False).returncode:
            failed.append(suite)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
