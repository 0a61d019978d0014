"""Campaign templates: sandboxed Jinja2, shared so the API validates what the sender renders."""

from dataclasses import dataclass
from typing import Any

from jinja2 import Template, TemplateError, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

from mailfleet_common.errors import MailfleetError


class InvalidTemplateError(MailfleetError):
    """A campaign template does not compile or does not render."""


def _environment(autoescape: bool) -> ImmutableSandboxedEnvironment:
    # Sandboxed and immutable: templates come from API clients and must not reach Python
    # internals or mutate the variables they are given. Unknown variables render empty.
    return ImmutableSandboxedEnvironment(
        autoescape=autoescape, undefined=Undefined, keep_trailing_newline=True
    )


_PLAIN = _environment(autoescape=False)
_HTML = _environment(autoescape=True)


@dataclass(frozen=True)
class CampaignTemplates:
    """The compiled subject, HTML and text templates of one campaign."""

    subject: Template
    html: Template | None
    text: Template | None

    def render(self, variables: dict[str, Any]) -> tuple[str, str | None, str | None]:
        """Render (subject, html, text) for one recipient's variables."""
        try:
            subject = self.subject.render(variables)
            html = None if self.html is None else self.html.render(variables)
            text = None if self.text is None else self.text.render(variables)
        except TemplateError as exc:
            raise InvalidTemplateError(f"template failed to render: {exc}") from exc
        except (ArithmeticError, LookupError, TypeError, ValueError) as exc:
            raise InvalidTemplateError(f"template failed to render: {exc!r}") from exc
        return subject, html, text


def compile_campaign(subject: str, html: str | None, text: str | None) -> CampaignTemplates:
    """Compile a campaign's templates, or raise InvalidTemplateError naming the part and line."""
    compiled: list[Template | None] = []
    for part, source, env in (
        ("subject", subject, _PLAIN),
        ("html_body", html, _HTML),
        ("text_body", text, _PLAIN),
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
    subject_template = compiled[0]
    assert subject_template is not None  # noqa: S101 - the subject is always compiled
    return CampaignTemplates(subject=subject_template, html=compiled[1], text=compiled[2])
