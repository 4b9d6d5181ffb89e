"""Sandboxed templates: rendering, escaping, single-line subjects, hostile input."""

from __future__ import annotations

from typing import Any

import pytest

from smarttasks.notifications.templates import Renderer, TemplateError, literal

CONTEXT: dict[str, Any] = {
    "task": {"title": "Fix <b>prod</b> & co", "priority": "high", "status": "todo",
             "labels": ["ops"], "due_at": None, "description": ""},
    "tasks": [],
    "rule": {"namespace": "team-a", "name": "overdue", "uid": "u", "generation": 1},
    "recipient": {"address": "ada@example.com", "name": "Ada", "user_id": None},
}  # fmt: skip


def test_subject_is_one_line_and_bodies_are_text_and_escaped_html() -> None:
    out = Renderer().render(
        subject="Overdue:\r\n{{ task.title }}\nBcc: x@example.com",
        body="Hi {{ recipient.name }},\n{{ task.title }}",
        context=CONTEXT,
    )
    assert out.subject == "Overdue: Fix <b>prod</b> & co Bcc: x@example.com"
    assert out.text == "Hi Ada,\nFix <b>prod</b> & co"
    assert out.html is not None
    assert "Fix &lt;b&gt;prod&lt;/b&gt; &amp; co" in out.html and "<b>prod" not in out.html


def test_html_is_left_out_when_not_asked_for() -> None:
    out = Renderer().render(subject="s", body="{{ task.title }}", context=CONTEXT, html=False)
    assert (out.subject, out.text, out.html) == ("s", "Fix <b>prod</b> & co", None)


def test_rendered_text_is_sent_as_written_never_compiled_again() -> None:
    out = literal(subject="Budget {{ 6 * 7 }}\r\nBcc: x@example.com", body="a {{ b <i>&")
    assert out.subject == "Budget {{ 6 * 7 }} Bcc: x@example.com"
    assert out.text == "a {{ b <i>&"
    assert out.html is not None and "a {{ b &lt;i&gt;&amp;" in out.html
    assert literal(subject="s", body="{%", html=False).html is None


def test_defaults_are_used_when_the_rule_gives_none() -> None:
    out = Renderer().render(subject="", body="", context=CONTEXT)
    assert out.subject == "[high] Fix <b>prod</b> & co (overdue)"
    assert "Sent by the automation rule team-a/overdue." in out.text
    digest = {**CONTEXT, "task": None, "tasks": [CONTEXT["task"], CONTEXT["task"]]}
    assert Renderer().render(subject="", body="", context=digest).subject == "2 tasks (overdue)"


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ rule.__class__.__init__.__globals__ }}",
        "{{ lipsum.__globals__['os'] }}",
        "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
        "{% set x = task.labels.append('pwned') %}{{ task.labels }}",
        "{{ task.update({'title': 'x'}) }}",
        "{{ ().__class__.__base__.__subclasses__() }}",
        "{{ self.__dict__ }}",
        "{{ range.__self__ }}",
    ],
)
def test_hostile_templates_cannot_reach_python_internals(template: str) -> None:
    before = list(CONTEXT["task"]["labels"])
    with pytest.raises(TemplateError, match="body template"):
        Renderer().render(subject="s", body=template, context=CONTEXT)
    assert CONTEXT["task"]["labels"] == before


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ("{{ task.title", "does not compile (line 1)"),
        ("{% for %}", "does not compile"),
        ("{{ task.missing }}", "missing"),
        ("{{ 1 / 0 }}", "ZeroDivisionError"),
        ("{% for i in range(5000) %}{% endfor %}", "limited to 1000"),
        ("{{ 'ab' * 60000 }}", "more than 100000 characters"),
        ("x" * 20_001, "longer than 20000"),
    ],
)
def test_broken_templates_say_why(template: str, reason: str) -> None:
    with pytest.raises(TemplateError) as caught:
        Renderer().render(subject="s", body=template, context=CONTEXT)
    assert reason in str(caught.value)


def test_compiled_templates_are_cached() -> None:
    renderer = Renderer(cache_size=2)
    for _ in range(3):
        renderer.render(subject="a {{ task.title }}", body="b", context=CONTEXT)
    assert len(renderer._cache) == 2  # noqa: SLF001 - subject and body (text + html twice)
