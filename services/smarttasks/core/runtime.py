"""Process-level tuning shared by every long-running component."""

from __future__ import annotations

import gc


def freeze_startup_objects() -> None:
    """Exclude everything allocated so far (modules, app, schemas, pools) from the garbage
    collector's scans, once start-up is done.

    A service's start-up leaves over a hundred thousand long-lived objects, and a full
    collection walks them all: about 90 ms for the tasks service, during which every
    request in that process waits. Frozen, they are never scanned again (they are not
    freed either, which they would not be anyway); collections see only what requests
    allocate. In `bench.api` this took the create p99 from about 200 ms to about 115 ms.
    """
    gc.collect()
    gc.freeze()
