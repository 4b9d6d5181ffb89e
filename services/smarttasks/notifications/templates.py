"""Subjects and bodies rendered with sandboxed Jinja2: rules are data, never code."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from html import escape
from typing import Any

from jinja2 import StrictUndefined, Template
from jinja2 import TemplateError as JinjaError
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_TEMPLATE_LENGTH = 20_000
MAX_OUTPUT_LENGTH = 100_000
# `range()` inside templates; the sandbox's default (100,000) lets nested loops spin for hours.
MAX_RANGE = 1_000

DEFAULT_SUBJECT = (
    "{% if task %}[{{ task.priority }}] {{ task.title }}"
    "{% else %}{{ tasks | length }} tasks{% endif %} ({{ rule.name }})"
)
DEFAULT_BODY = """\
{% if task %}{{ task.title }}
Status: {{ task.status }}, priority: {{ task.priority }}
{% if task.due_at %}Due: {{ task.due_at }}
{% endif %}{% if task.description %}
{{ task.description }}
{% endif %}{% else %}{% for t in tasks %}- {{ t.title }} ({{ t.status }}{% if t.due_at %}, \
due {{ t.due_at }}{% endif %})
{% endfor %}{% endif %}
Sent by the automation rule {{ rule.namespace }}/{{ rule.name }}.
"""


class TemplateError(Exception):
    """A subject or body template does not compile or does not render."""


@dataclass(frozen=True, slots=True)
class Rendered:
    subject: str
    text: str
    html: str | None  # None when not asked for


def _environment(*, autoescape: bool) -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        undefined=StrictUndefined,
        autoescape=autoescape,
        keep_trailing_newline=True,
        auto_reload=False,
    )
    env.globals["range"] = _bounded_range
    return env


def _bounded_range(*args: int) -> range:
    rng = range(*args)
    if len(rng) > MAX_RANGE:
        raise OverflowError(f"range() in a template is limited to {MAX_RANGE} items")
    return rng


class Renderer:
    """Compiles templates once (cached by source) and renders them in the sandbox.

    Unsafe attributes (`__class__`, `mro`, function globals...) are refused by the sandbox,
    data in scope cannot be modified, and output is capped. Every failure, whatever raised
    it, becomes a TemplateError naming the template.
    """

    def __init__(self, *, cache_size: int = 1024) -> None:
        self._text = _environment(autoescape=False)
        self._html = _environment(autoescape=True)
        self._cache: OrderedDict[tuple[bool, str], Template] = OrderedDict()
        self._cache_size = cache_size

    def _compile(self, source: str, *, html: bool, what: str) -> Template:
        key = (html, source)
        template = self._cache.get(key)
        if template is not None:
            self._cache.move_to_end(key)
            return template
        if len(source) > MAX_TEMPLATE_LENGTH:
            raise TemplateError(f"{what} template longer than {MAX_TEMPLATE_LENGTH} characters")
        env = self._html if html else self._text
        try:
            template = env.from_string(source)
        except JinjaError as exc:
            lineno = getattr(exc, "lineno", None)
            line = f" (line {lineno})" if lineno else ""
            raise TemplateError(f"{what} template does not compile{line}: {exc}") from None
        self._cache[key] = template
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return template

    def _render(self, source: str, context: Mapping[str, Any], *, html: bool, what: str) -> str:
        template = self._compile(source, html=html, what=what)
        out: list[str] = []
        size = 0
        try:
            for chunk in template.generate(**context):
                size += len(chunk)
                if size > MAX_OUTPUT_LENGTH:
                    raise TemplateError(
                        f"{what} template renders more than {MAX_OUTPUT_LENGTH} characters"
                    )
                out.append(chunk)
        except TemplateError:
            raise
        except Exception as exc:  # anything a template can raise: SecurityError, TypeError...
            raise TemplateError(f"{what} template failed: {type(exc).__name__}: {exc}") from None
        return "".join(out)

    def render(
        self, *, subject: str, body: str, context: Mapping[str, Any], html: bool = True
    ) -> Rendered:
        """Subject on one line (line breaks would inject headers), text body, and the HTML
        body unless `html` is false (a webhook carries no HTML)."""
        subject_src = subject or DEFAULT_SUBJECT
        body_src = body or DEFAULT_BODY
        rendered_subject = " ".join(
            self._render(subject_src, context, html=False, what="subject").split()
        )
        text = self._render(body_src, context, html=False, what="body")
        if not html:
            return Rendered(subject=rendered_subject, text=text, html=None)
        html_body = self._render(body_src, context, html=True, what="body")
        return Rendered(subject=rendered_subject, text=text, html=_html_document(html_body))


def literal(*, subject: str, body: str, html: bool = True) -> Rendered:
    """Already-rendered text as a message: never compiled again, so text that happens to
    contain ``{{`` (a task titled "Budget {{ 6 * 7 }}") is sent as written."""
    text = body[:MAX_OUTPUT_LENGTH]
    one_line = " ".join(subject[:MAX_OUTPUT_LENGTH].split())
    if not html:
        return Rendered(subject=one_line, text=text, html=None)
    return Rendered(subject=one_line, text=text, html=_html_document(escape(text)))


def _html_document(body: str) -> str:
    # The body template's line breaks are kept, so one template serves both parts.
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"></head>\n'
        '<body><div style="white-space: pre-wrap; font-family: sans-serif">'
        f"{body}</div></body></html>\n"
    )
