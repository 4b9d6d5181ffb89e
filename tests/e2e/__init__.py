"""End-to-end scenarios: every component as its own process, or one `smarttasks up`."""

import pytest

# The scenarios' asserts live outside the test modules: show compared values there too.
pytest.register_assert_rewrite("tests.e2e.scenarios", "tests.e2e.platforms")
