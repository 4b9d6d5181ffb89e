"""CEL conditions (``spec.match.condition``): compiled and checked once, evaluated per task."""

from __future__ import annotations

import re
from asyncio import CancelledError
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import cel

from smarttasks.automation.rules.documents import (
    ALIASES,
    SAMPLE_CHANGES,
    SAMPLE_NOW,
    SAMPLE_TASK,
    TASK_FIELDS,
)

VARIABLES = frozenset({"task", "changes", "now"})
"""What a condition can refer to: the task, the event's changes, the current time."""

# Type identifiers (`type(x) == string`) and the `optional` namespace parse as variables.
_BUILTIN_NAMES = frozenset(
    {"int", "uint", "double", "bool", "string", "bytes", "list", "map", "null_type", "type"}
    | {"optional"}
)

SUPPORTED_FUNCTIONS = frozenset(
    {
        "size",
        "contains",
        "startsWith",
        "endsWith",
        "matches",
        "int",
        "uint",
        "double",
        "string",
        "bytes",
        "timestamp",
        "duration",
        "type",
        "dyn",
        "getFullYear",
        "getMonth",
        "getDayOfYear",
        "getDayOfMonth",
        "getDate",
        "getDayOfWeek",
        "getHours",
        "getMinutes",
        "getSeconds",
        "getMilliseconds",
        "of",
        "none",
        "ofNonZeroValue",
        "hasValue",
        "value",
        "orValue",
        "or",
    }
)
"""Named CEL functions the evaluator implements; anything else is refused at compile time."""

# Variables bound by comprehension macros: `task.labels.exists(l, l == "x")` binds `l`.
_MACRO_BINDING = re.compile(
    r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*,"
)
_PARSE_PREFIX = re.compile(r"^Failed to parse expression '.*?': ", re.DOTALL)
_POSITION = re.compile(r"^(\d+):(\d+):")
_UNDEFINED = re.compile(r"Undefined variable or function: '([^']*)'")


class ConditionError(Exception):
    """A condition could not be evaluated for a task (a type error, a missing map key, ...)."""


class ConditionCompileError(ValueError):
    """A condition does not compile; the message says why in words a person understands."""


class Activation:
    """What conditions see for one task: ``task``, ``changes`` and ``now``, converted once.

    Converting the variables to CEL values costs far more than evaluating a typical
    condition, so the engine prepares one activation per event and evaluates every
    candidate rule's condition in it. Not for use from several threads at once.
    """

    __slots__ = ("_context", "_variables")

    def __init__(self, task: Mapping[str, Any], changes: Mapping[str, Any], now: datetime) -> None:
        self._variables: dict[str, Any] | None = {"task": task, "changes": changes, "now": now}
        self._context: cel.Context | None = None

    def context(self) -> cel.Context:
        """The CEL context (built on first use; raises if a value cannot be converted)."""
        if self._context is None:
            assert self._variables is not None
            self._context = cel.Context(self._variables)
            self._variables = None
        return self._context


@dataclass(frozen=True, eq=False)
class Condition:
    """A compiled CEL condition; ``evaluate`` is safe to call concurrently."""

    source: str
    program: Any = field(repr=False)

    def evaluate(self, task: Mapping[str, Any], changes: Mapping[str, Any], now: datetime) -> bool:
        """The condition's value for a task document; raises :class:`ConditionError`.

        A result that is not a boolean is an error too: a condition must be true or false.
        """
        return self.evaluate_in(Activation(task, changes, now))

    def evaluate_in(self, activation: Activation) -> bool:
        """Like :meth:`evaluate`, with variables already prepared (shared by many conditions)."""
        try:
            result = self.program.execute(activation.context())
        except KeyError as exc:
            raise ConditionError(f"no such key {exc.args[0]!r}") from None
        except BaseException as exc:  # ValueError/TypeError/RuntimeError/... or a Rust panic
            if _fatal(exc):
                raise
            raise ConditionError(_clean(str(exc))) from None
        if not isinstance(result, bool):
            raise ConditionError(
                f"the condition must be true or false, but it gave {_cel_type(result)}"
            )
        return result


def compile_condition(source: str) -> Condition:
    """Parse, check and try a condition; raises :class:`ConditionCompileError`.

    Beyond syntax, refuses names other than ``task``, ``changes`` and ``now``, functions
    the evaluator does not implement, fields a task does not have, and expressions that
    are not true or false for a representative task.
    """
    try:
        program = cel.compile(source)
    except BaseException as exc:  # ValueError, or a Rust panic (a BaseException)
        if _fatal(exc):
            raise
        raise ConditionCompileError(_clean(str(exc))) from None
    bound = set(_MACRO_BINDING.findall(source))
    allowed = VARIABLES | _BUILTIN_NAMES | bound
    unknown = sorted(set(program.variables()) - allowed)
    if unknown:
        raise ConditionCompileError(
            f"unknown name {unknown[0]!r}: a condition can use task, changes and now "
            '(for example task.priority == "high")'
        )
    functions = {f for f in program.functions() if f[:1].isalpha()}
    unsupported = sorted(functions - SUPPORTED_FUNCTIONS)
    if unsupported:
        raise ConditionCompileError(f"unknown function {unsupported[0]!r}")
    condition = Condition(source=source, program=program)
    try:
        condition.evaluate(SAMPLE_TASK, SAMPLE_CHANGES, SAMPLE_NOW)
    except ConditionError as exc:
        raise ConditionCompileError(_explain_trial(str(exc))) from None
    return condition


def _fatal(exc: BaseException) -> bool:
    # PyO3 reports a panic in the extension as PanicException, a BaseException; that is a
    # failure of this one condition. Interrupts and cancellation must still propagate.
    return isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit | CancelledError)


def _explain_trial(message: str) -> str:
    key = re.fullmatch(r"no such key '(.*)'", message, re.DOTALL)
    if key and key.group(1) not in {*TASK_FIELDS, *ALIASES}:
        fields = ", ".join(sorted({*TASK_FIELDS, *ALIASES}))
        return f"a task has no field {key.group(1)!r} (its fields are {fields})"
    return f"the condition fails for a typical task: {message}"


def _clean(message: str) -> str:
    message = _PARSE_PREFIX.sub("", message.strip())
    undefined = _UNDEFINED.search(message)
    if undefined:
        return f"unknown function or name {undefined.group(1)!r}"
    message = message.removeprefix("ERROR: <input>:").strip()
    return _POSITION.sub(r"line \1, column \2:", message, count=1)


def _cel_type(value: object) -> str:
    names = {str: "a string", int: "a number", float: "a number", list: "a list", dict: "a map"}
    if value is None:
        return "null"
    return names.get(type(value), f"a {type(value).__name__}")


__all__ = [
    "SUPPORTED_FUNCTIONS",
    "VARIABLES",
    "Activation",
    "Condition",
    "ConditionCompileError",
    "ConditionError",
    "compile_condition",
]
