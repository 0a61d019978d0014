"""Campaign templates: sandboxed Jinja2, shared so the API validates what the sender renders.

Templates come from API clients, so a render is bounded as well as sandboxed. Every loop
iteration, operator, call and filter spends from an operation budget; no value a template
builds (string, list, number) may grow past the output bound, and the checks that can be made
before an amplifying step (``'x' * n``, ``10 ** n``, widths, ``replace``, ``join``) are made
before it; the rendered text is cut off at the bound. Nothing is computed while compiling:
the intercepted operators and every filter only run inside a metered render.
"""

import functools
import re
import string
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from jinja2 import Template, TemplateError, Undefined, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from mailfleet_common.errors import MailfleetError

# Numbers a template computes stay below this many bits (about 1,200 decimal digits).
MAX_INT_BITS = 4096
# An amplifying call (replace, indent, join) may need this many times the output bound while
# it runs; its result must still fit the bound.
_TRANSIENT_FACTOR = 4
# Sizes are charged one operation per this many characters or items.
_CHARS_PER_OPERATION = 64
_METERED_LOOP = "_mailfleet_metered_loop"
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
_DIGITS = re.compile(r"\d+")


class InvalidTemplateError(MailfleetError):
    """A campaign template does not compile or does not render."""


class TemplateLimitError(InvalidTemplateError):
    """Rendering a template would take more work or build more text than allowed."""


@dataclass(frozen=True)
class TemplateLimits:
    """How much one render of one part (subject, HTML or text) may do and produce."""

    max_operations: int = 100_000
    max_output_chars: int = 1_000_000


DEFAULT_LIMITS = TemplateLimits()


class _NotRenderingError(Exception):
    """A filter or operator was reached outside a render, by Jinja's constant folding.

    Raising it makes Jinja leave the expression to the metered render.
    """


@dataclass
class _Meter:
    limits: TemplateLimits
    left: int = field(init=False)

    def __post_init__(self) -> None:
        self.left = self.limits.max_operations

    def spend(self, operations: int) -> None:
        self.left -= operations
        if self.left < 0:
            raise TemplateLimitError(
                f"template needs more than {self.limits.max_operations} operations to render"
            )

    def size(self, value: Any) -> int:
        """Characters or items in a value, nested ones included; stops counting past the bound."""
        if isinstance(value, str | bytes):
            return len(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value.bit_length() // 3
        if not isinstance(value, list | tuple | dict | set | frozenset):
            return 1
        bound = self.limits.max_output_chars
        total = len(value)
        items: Iterable[Any] = value.items() if isinstance(value, dict) else value
        for item in items:
            if total > bound:
                break
            total += self.size(item)
        return total

    def checked(self, value: Any) -> Any:
        """The value, once it is known to be within the bounds; charges for its size."""
        if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
            raise TemplateLimitError(f"template computes a number of more than {MAX_INT_BITS} bits")
        size = self.size(value)
        if size > self.limits.max_output_chars:
            raise TemplateLimitError(
                f"template builds a value of more than {self.limits.max_output_chars} characters"
            )
        self.spend(1 + size // _CHARS_PER_OPERATION)
        return value

    def check_number(self, value: Any, what: str) -> None:
        if isinstance(value, int) and abs(value) > self.limits.max_output_chars:
            raise TemplateLimitError(
                f"{what} is given {value}; at most {self.limits.max_output_chars} is allowed"
            )

    def check_arguments(self, name: str, target: Any, args: Iterable[Any]) -> None:
        """Refuse a call whose result would be out of bounds before it is made."""
        values = list(args)
        for value in values:
            self.check_number(value, name)
        longest = max((len(v) for v in values if isinstance(v, str)), default=0)
        if name == "join":
            sequence = next((v for v in (target, *values) if not isinstance(v, str)), ())
            separator = next((v for v in (target, *values) if isinstance(v, str)), "")
            estimate = self.size(sequence) * (1 + len(separator))
        else:
            estimate = self.size(target) * (1 + longest)
        if estimate > _TRANSIENT_FACTOR * self.limits.max_output_chars:
            raise TemplateLimitError(
                f"{name} would build more than {self.limits.max_output_chars} characters"
            )
        self.spend(1 + sum(map(self.size, values)) // _CHARS_PER_OPERATION)

    def check_format(self, spec_numbers: Iterable[str], args: Iterable[Any]) -> None:
        """Refuse a format whose widths or precisions exceed the bound (``%9999999s``)."""
        for number in spec_numbers:
            if number and number != "*":
                self.check_number(int(number), "a format width")
        for value in args:
            self.check_number(value, "a format")

    def iterate(self, iterable: Iterable[Any]) -> Iterator[Any]:
        for item in iterable:
            self.spend(1)
            yield item

    def collect(self, iterator: Iterator[Any]) -> list[Any]:
        """A lazy sequence made a list, so its size can be checked before it is used."""
        items = []
        for item in self.iterate(iterator):
            items.append(item)
            if len(items) > self.limits.max_output_chars:
                self.checked(items)
        return items


_current: ContextVar[_Meter | None] = ContextVar("template_meter", default=None)


def _meter() -> _Meter:
    meter = _current.get()
    if meter is None:
        raise _NotRenderingError
    return meter


def _format_spec_numbers(template: str) -> list[str]:
    """Every number in the format specs of a str.format template, nested specs included."""
    numbers = []
    try:
        for _, _, spec, _ in string.Formatter().parse(template):
            if spec:
                numbers += _DIGITS.findall(spec)
    except ValueError:  # not a valid format string: str.format will say so itself
        return []
    return numbers


def _percent_numbers(template: str) -> list[str]:
    return [n for match in _PERCENT_SPEC.finditer(template) for n in match.groups() if n]


def _format_arguments(right: Any) -> list[Any]:
    if isinstance(right, tuple):
        return list(right)
    if isinstance(right, Mapping):
        return list(right.values())
    return [right]


def _metered_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)  # keeps jinja_pass_arg, so Jinja passes the same arguments
    def metered(*args: Any, **kwargs: Any) -> Any:
        meter = _meter()
        data = [a for a in args if not isinstance(a, Context) and not hasattr(a, "autoescape")]
        if data and isinstance(data[0], Iterator):
            collected = meter.collect(data[0])
            args = tuple(collected if a is data[0] else a for a in args)
            data[0] = collected
        target, *others = data or [None]
        meter.check_arguments(name, target, [*others, *kwargs.values()])
        if name == "format" and isinstance(target, str):
            meter.check_format(_percent_numbers(target), [*others, *kwargs.values()])
        return meter.checked(function(*args, **kwargs))

    return metered


def _metered_loop(iterable: Any) -> Iterator[Any]:
    return _meter().iterate(iterable)


class _BoundedCodeGenerator(CodeGenerator):
    """Jinja's code generator, with the result of each ``~`` (concatenation) checked."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:  # noqa: N802 - Jinja's name
        self.write("environment.checked_concat(")
        super().visit_Concat(node, frame)
        self.write(")")


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with every operation metered and every value bounded."""

    code_generator_class = _BoundedCodeGenerator
    intercepted_binops = frozenset(["*", "**", "%", "+", "-", "/", "//"])

    def __init__(self, autoescape: bool) -> None:
        # Unknown variables render empty, as a missing personalization should.
        super().__init__(autoescape=autoescape, undefined=Undefined, keep_trailing_newline=True)
        del self.globals["lipsum"]  # sized by an argument, and of no use in an email
        self.filters = {name: _metered_filter(name, f) for name, f in self.filters.items()}
        self.filters[_METERED_LOOP] = _metered_loop

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        # Every {% for %} iterates through the meter, so loops spend from the budget.
        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(nodes.For):
            loop.iter = nodes.Filter(loop.iter, _METERED_LOOP, [], [], None, None)
            loop.iter.set_lineno(loop.lineno)
        return tree

    def checked_concat(self, value: str) -> str:
        checked: str = _meter().checked(value)
        return checked

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        meter = _meter()
        meter.spend(1)
        numbers = isinstance(left, int) and isinstance(right, int)
        if operator == "**" and numbers and right > 0:
            if abs(left).bit_length() * right > MAX_INT_BITS:
                raise TemplateLimitError(
                    f"template computes a number of more than {MAX_INT_BITS} bits"
                )
        elif operator == "*" and not numbers:
            count, sequence = (right, left) if isinstance(right, int) else (left, right)
            if isinstance(count, int) and meter.size(sequence) * count > (
                meter.limits.max_output_chars
            ):
                raise TemplateLimitError(
                    f"template builds a value of more than {meter.limits.max_output_chars} "
                    "characters"
                )
        elif operator == "%" and isinstance(left, str):
            meter.check_format(_percent_numbers(left), _format_arguments(right))
        return meter.checked(super().call_binop(context, operator, left, right))

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        meter = _meter()
        function = getattr(__obj, "__wrapped__", __obj)
        name = getattr(function, "__name__", "call")
        target = getattr(function, "__self__", None)
        meter.check_arguments(name, target, [*args, *kwargs.values()])
        if name in ("format", "format_map") and isinstance(target, str):
            values = args[0].values() if name == "format_map" and args else kwargs.values()
            meter.check_format(_format_spec_numbers(target), [*args, *values])
        return meter.checked(super().call(__context, __obj, *args, **kwargs))


_PARTS = ("subject", "html_body", "text_body")
_PLAIN = _BoundedEnvironment(autoescape=False)
_HTML = _BoundedEnvironment(autoescape=True)
# What a template may raise while it compiles or renders, beyond TemplateError: a number too
# large to print, a type or key error, a recursion (a macro calling itself) too deep.
_RENDER_ERRORS = (ArithmeticError, LookupError, TypeError, ValueError, RecursionError)


def _render(template: Template, variables: dict[str, Any]) -> str:
    bound = _meter().limits.max_output_chars
    chunks = []
    produced = 0
    for chunk in template.generate(variables):
        produced += len(chunk)
        if produced > bound:
            raise TemplateLimitError(f"template renders more than {bound} characters")
        chunks.append(chunk)
    return "".join(chunks)


@dataclass(frozen=True)
class CampaignTemplates:
    """The compiled subject, HTML and text templates of one campaign."""

    subject: Template
    html: Template | None
    text: Template | None
    limits: TemplateLimits = DEFAULT_LIMITS

    def render(self, variables: dict[str, Any]) -> tuple[str, str | None, str | None]:
        """Render (subject, html, text) for one recipient's variables, within the limits."""
        # One budget for the three parts: a message costs at most max_operations.
        meter = _Meter(self.limits)
        token = _current.set(meter)
        rendered = []
        try:
            for part, template in zip(_PARTS, (self.subject, self.html, self.text), strict=True):
                try:
                    rendered.append(None if template is None else _render(template, variables))
                except TemplateLimitError as exc:
                    raise TemplateLimitError(f"{part}: {exc}") from None
                except TemplateError as exc:
                    raise InvalidTemplateError(f"{part} failed to render: {exc}") from exc
                except _RENDER_ERRORS as exc:
                    raise InvalidTemplateError(f"{part} failed to render: {exc!r}") from exc
        finally:
            _current.reset(token)
        subject, html, text = rendered
        assert subject is not None  # noqa: S101 - the subject is always rendered
        return subject, html, text

    def check_limits(self) -> None:
        """Render once without variables; raise TemplateLimitError if that is over the limits.

        Other failures are left to the render with a recipient's variables, which may succeed.
        """
        try:
            self.render({})
        except TemplateLimitError:
            raise
        except InvalidTemplateError:
            pass


def compile_campaign(
    subject: str,
    html: str | None,
    text: str | None,
    limits: TemplateLimits = DEFAULT_LIMITS,
) -> CampaignTemplates:
    """Compile a campaign's templates, or raise InvalidTemplateError naming the part and line."""
    compiled: list[Template | None] = []
    for part, source, env in zip(
        _PARTS, (subject, html, text), (_PLAIN, _HTML, _PLAIN), strict=True
    ):
        if source is None:
            compiled.append(None)
            continue
        try:
            compiled.append(env.from_string(source))
        except TemplateError as exc:
            line = getattr(exc, "lineno", None)
            where = f" (line {line})" if line else ""
            raise InvalidTemplateError(f"{part} is not a valid template{where}: {exc}") from exc
        except _RENDER_ERRORS as exc:
            raise InvalidTemplateError(f"{part} is not a valid template: {exc!r}") from exc
    subject_template = compiled[0]
    assert subject_template is not None  # noqa: S101 - the subject is always compiled
    return CampaignTemplates(subject_template, compiled[1], compiled[2], limits)
