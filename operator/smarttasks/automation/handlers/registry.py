"""The kopf registry every handler of the automation operator registers with.

An explicit registry, not kopf's global default, so that importing the handlers in
another process (the rules API, tests) registers nothing anywhere else.
"""

import kopf

registry = kopf.OperatorRegistry()

__all__ = ["registry"]
