"""Campaign templates render within bounds of work and size, whatever the template asks."""

import time

import pytest
from mailfleet_common.templating import (
    InvalidTemplateError,
    TemplateLimitError,
    TemplateLimits,
    compile_campaign,
)

OVER_THE_LIMITS = {
    "a huge power": "{{ 10**5000 }}",
    "a huge repetition": "{{ 'x' * 10**8 }}",
    "a huge repetition of a literal": "{{ 'x' * 100000000 }}",
    "a nested loop": "{% for i in range(100000) %}{% for j in range(100000) %}"
    "{% endfor %}{% endfor %}",
    "a nested loop printing": "{% for i in range(100000) %}{% for j in range(100000) %}"
    "x{% endfor %}{% endfor %}",
    "a wide percent format": "{{ '%999999999s' % 'x' }}",
    "a wide percent format by star": "{{ '%*s' % (999999999, 'x') }}",
    "a wide str.format": "{{ '{:999999999}'.format(1) }}",
    "a nested format width": "{{ '{:{w}}'.format(1, w=999999999) }}",
    "a wide filter": "{{ 'x'|center(999999999) }}",
    "a wide method": "{{ 'x'.ljust(999999999) }}",
    "doubling by concatenation": "{% set ns = namespace(x='xxxxxxxxxx') %}"
    "{% for i in range(60) %}{% set ns.x = ns.x ~ ns.x %}{% endfor %}{{ ns.x|length }}",
    "doubling by addition": "{% set ns = namespace(x='xxxxxxxxxx') %}"
    "{% for i in range(60) %}{% set ns.x = ns.x + ns.x %}{% endfor %}{{ ns.x|length }}",
    "squaring a number": "{% set ns = namespace(x=3) %}{% for i in range(100) %}"
    "{% set ns.x = ns.x * ns.x %}{% endfor %}{{ ns.x }}",
    "an amplifying replace": "{{ ('x' * 1000000)|replace('', 'yyyy') }}",
    "an amplifying join": "{{ (['x' * 1000] * 1000)|join('-' * 1000) }}",
    "a nested structure": "{{ ([['x' * 100] * 1000] * 1000)|tojson }}",
    "an amplifying indent": "{{ ('a\\n' * 100000)|indent('y' * 100000) }}",
    "a lazy amplification": "{{ (['x' * 1000] * 1000)|map('upper')|join('-' * 1000) }}",
    "a long output": "{% for i in range(50000) %}{{ 'x' * 100 }}{% endfor %}",
}


@pytest.mark.parametrize("source", OVER_THE_LIMITS.values(), ids=OVER_THE_LIMITS.keys())
def test_a_template_over_the_limits_is_refused_quickly(source: str) -> None:
    started = time.perf_counter()
    templates = compile_campaign(source, None, None)
    with pytest.raises(TemplateLimitError, match=r"^subject: "):
        templates.render({})
    with pytest.raises(TemplateLimitError):
        templates.check_limits()
    assert time.perf_counter() - started < 1.0


def test_recursion_is_a_render_failure_not_a_crash() -> None:
    templates = compile_campaign(
        "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(1) }}", None, None
    )
    with pytest.raises(InvalidTemplateError, match="RecursionError"):
        templates.render({})


@pytest.mark.parametrize(
    "source",
    [
        "{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}",
        "{{ " + "9" * 5000 + " }}",
        "{{ x ~ ",
    ],
    ids=["deep nesting", "a number too long to print", "a syntax error"],
)
def test_a_template_that_cannot_compile_is_invalid(source: str) -> None:
    with pytest.raises(InvalidTemplateError, match=r"^subject is not a valid template"):
        compile_campaign(source, None, None)


def test_ordinary_templates_render_as_before() -> None:
    templates = compile_campaign(
        "Hello {{ name|upper }}",
        "<p>{% for x in items %}{{ loop.index }}:{{ x }} {% endfor %}{{ note }}</p>",
        "{{ 3 * 4 }} {{ 'ab' * 3 }} {{ '%05d'|format(42) }} {{ '{:>4}'.format('a') }} "
        "{{ items|map('string')|join(', ') }} {{ 2 ** 10 }} {{ 'a-b'.replace('-', '+') }}",
    )
    subject, html, text = templates.render({"name": "bob", "items": [1, 2], "note": "<b>"})
    assert subject == "Hello BOB"
    assert html == "<p>1:1 2:2 &lt;b&gt;</p>"
    assert text == "12 ababab 00042    a 1, 2 1024 a+b"


def test_the_limits_are_settings() -> None:
    loop = "{% for i in range(200) %}x{% endfor %}"
    assert compile_campaign(loop, None, None).render({})[0] == "x" * 200
    tight = TemplateLimits(max_operations=100, max_output_chars=1000)
    with pytest.raises(TemplateLimitError, match="more than 100 operations"):
        compile_campaign(loop, None, None, tight).render({})
    with pytest.raises(TemplateLimitError, match="more than 1000 characters"):
        compile_campaign("{{ 'x' * 1001 }}", None, None, tight).render({})


def test_a_template_failing_only_without_variables_passes_the_limits_check() -> None:
    templates = compile_campaign("{{ total / count }}", None, None)
    templates.check_limits()
    assert templates.render({"total": 6, "count": 3})[0] == "2.0"
