"""Subject and body templates: Jinja2 in an immutable sandbox with bounded output and work.

A template is written by whoever may create rules, and rendered inside the operator for
every firing, so it must neither reach Python internals (the sandbox), change the task
it is shown (immutable), nor make the operator build gigabyte strings or spin forever
(bounded repetition, padding, ranges and output).
"""

from __future__ import annotations

import contextvars
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import jinja2
from jinja2 import StrictUndefined, TemplateSyntaxError
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_REPEAT = 100_000
"""Largest string or list that ``*``, padding or formatting may produce (characters/items)."""
MAX_RANGE_ITEMS = 10_000
"""Items all ``range()`` calls of one rendering may produce together."""
MAX_EXPONENT = 64
MAX_FORMAT_WIDTH = 1_000

_range_budget: contextvars.ContextVar[list[int]] = contextvars.ContextVar("_range_budget")
_PADDING_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})
_FORMAT_METHODS = frozenset({"format", "format_map"})
# Format strings whose width or precision could pad to megabytes: "%9999s", "%*s",
# "{:>9999}", "{:{}}". Digits elsewhere in the string ("Report for 2026") are fine.
_WIDE_PERCENT = re.compile(r"%[^a-zA-Z%]*(\d{4,}|\*)")
_WIDE_BRACE = re.compile(r"\{[^{}]*:[^{}]*(\d{4,}|\{)")


class TemplateCompileError(ValueError):
    """A template does not parse; the message names the line."""


class TemplateRenderError(Exception):
    """A template failed while rendering (an undefined name, a refused operation, too long)."""


def _budgeted_range(*args: int) -> range:
    result = range(*args)
    budget = _range_budget.get(None)
    if budget is not None:
        budget[0] -= len(result)
        if budget[0] < 0:
            raise SecurityError(f"range() produced more than {MAX_RANGE_ITEMS} items")
    elif len(result) > MAX_RANGE_ITEMS:
        raise SecurityError(f"range() produced more than {MAX_RANGE_ITEMS} items")
    return result


def _check_size(size: int) -> None:
    if size > MAX_REPEAT:
        raise SecurityError(f"the result would be longer than {MAX_REPEAT} characters or items")


def _guard_width(filter_: Callable[..., Any], *, positional: int) -> Callable[..., Any]:
    """Wrap a padding filter (center, indent) so its width argument is bounded."""

    def guarded(*args: Any, **kwargs: Any) -> Any:
        widths = [*args[positional : positional + 1], *kwargs.values()]
        for width in widths:
            if isinstance(width, int) and width > MAX_FORMAT_WIDTH:
                raise SecurityError(f"width {width} is larger than {MAX_FORMAT_WIDTH}")
        return filter_(*args, **kwargs)

    return guarded


def _guarded_format(value: Any, *args: Any, **kwargs: Any) -> str:
    if isinstance(value, str) and _WIDE_PERCENT.search(value):
        raise SecurityError(f"format widths are limited to {MAX_FORMAT_WIDTH - 1}")
    result: str = jinja2.filters.do_format(value, *args, **kwargs)
    return result


class _Sandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "%"})

    def call_binop(
        self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any
    ) -> Any:
        if operator == "**" and isinstance(right, int | float) and abs(right) > MAX_EXPONENT:
            raise SecurityError(f"exponents larger than {MAX_EXPONENT} are not allowed")
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(times, int):
                    _check_size(len(seq) * times)
        if operator == "%" and isinstance(left, str) and _WIDE_PERCENT.search(left):
            raise SecurityError(f"format widths are limited to {MAX_FORMAT_WIDTH - 1}")
        return super().call_binop(context, operator, left, right)

    def call(
        __self,  # noqa: N805 - Jinja's signature
        __context: jinja2.runtime.Context,
        __obj: Any,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        # The sandbox hands out str.format wrapped (functools.wraps): look through the wrapper.
        target = getattr(__obj, "__wrapped__", __obj)
        owner = getattr(target, "__self__", None)
        name = getattr(target, "__name__", "")
        if isinstance(owner, str):
            if name in _PADDING_METHODS:
                for arg in (*args, *kwargs.values()):
                    if isinstance(arg, int) and arg > MAX_FORMAT_WIDTH:
                        raise SecurityError(f"width {arg} is larger than {MAX_FORMAT_WIDTH}")
            if name in _FORMAT_METHODS and _WIDE_BRACE.search(owner):
                raise SecurityError(f"format widths are limited to {MAX_FORMAT_WIDTH - 1}")
        return super().call(__context, __obj, *args, **kwargs)


def _environment() -> _Sandbox:
    env = _Sandbox(
        undefined=StrictUndefined,
        autoescape=False,
        keep_trailing_newline=False,
        auto_reload=False,
        cache_size=0,
    )
    env.globals["range"] = _budgeted_range
    env.globals.pop("lipsum", None)
    env.filters["center"] = _guard_width(env.filters["center"], positional=1)
    env.filters["indent"] = _guard_width(env.filters["indent"], positional=1)
    env.filters["wordwrap"] = _guard_width(env.filters["wordwrap"], positional=2)
    env.filters["format"] = _guarded_format
    return env


_ENV = _environment()


@dataclass(frozen=True, eq=False)
class MessageTemplate:
    """A compiled subject or body template; ``render`` is safe to call from any thread."""

    source: str
    limit: int
    template: jinja2.Template = field(repr=False)

    def render(self, context: Mapping[str, Any]) -> str:
        """Render with ``context``; raises :class:`TemplateRenderError`, never anything else."""
        token = _range_budget.set([MAX_RANGE_ITEMS])
        try:
            return _join_bounded(self.template.generate(dict(context)), self.limit)
        except TemplateRenderError:
            raise
        except RecursionError:
            raise TemplateRenderError("the template recurses too deeply") from None
        except MemoryError:
            raise TemplateRenderError("the template needs too much memory") from None
        except Exception as exc:  # anything a template can raise is the template's fault
            raise TemplateRenderError(_describe(exc)) from None
        finally:
            _range_budget.reset(token)


def _join_bounded(chunks: Iterator[str], limit: int) -> str:
    out: list[str] = []
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise TemplateRenderError(f"the result is longer than {limit} characters")
        out.append(chunk)
    return "".join(out)


_NO_FIELD = re.compile(r"'[\w.]*TaskDocument object' has no attribute")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, jinja2.UndefinedError):
        return _NO_FIELD.sub("the task has no field", exc.message or str(exc))
    if isinstance(exc, SecurityError):
        return f"not allowed: {exc}"
    return f"{type(exc).__name__}: {exc}"


def compile_template(source: str, *, limit: int) -> MessageTemplate:
    """Parse and compile a template; raises :class:`TemplateCompileError` naming the line."""
    try:
        template = _ENV.from_string(source)
    except TemplateSyntaxError as exc:
        raise TemplateCompileError(f"line {exc.lineno}: {exc.message}") from None
    except RecursionError:
        raise TemplateCompileError("the template is nested too deeply") from None
    except Exception as exc:  # the parser's other failures (e.g. a too-deep expression)
        raise TemplateCompileError(_describe(exc)) from None
    return MessageTemplate(source=source, limit=limit, template=template)


__all__ = [
    "MAX_RANGE_ITEMS",
    "MAX_REPEAT",
    "MessageTemplate",
    "TemplateCompileError",
    "TemplateRenderError",
    "compile_template",
]
