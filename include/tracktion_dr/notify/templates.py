"""The seed's communication texts, kept as files in the repo and filled by name.

Templates live in ``templates/`` next to this module. ``.txt`` templates start with a
``Subject: ...`` line (the e-mail subject and chat title); ``.md`` templates are documents.
Placeholders are ``${name}`` (``string.Template``): values are inserted as text, never
parsed, so a description with quotes, ``$`` or newlines arrives as written. A placeholder
without a value is an error naming it - a notice never goes out with a hole in it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from string import Template

from tracktion_dr.core.errors import DrError

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"


class TemplateError(DrError, KeyError):
    """A template is unknown or a placeholder has no value."""


@dataclass(frozen=True)
class Rendered:
    subject: str
    body: str


def template_names() -> list[str]:
    return sorted(p.stem for p in TEMPLATE_DIR.iterdir() if p.suffix in (".txt", ".md"))


def _source(name: str) -> str:
    for suffix in (".txt", ".md"):
        path = TEMPLATE_DIR / f"{name}{suffix}"
        if path.exists():
            return path.read_text(encoding="utf-8")
    raise TemplateError(f"no template {name!r} (have {template_names()})")


def placeholders(name: str) -> set[str]:
    return set(Template(_source(name)).get_identifiers())


def render(name: str, **values: object) -> Rendered:
    """Fill template ``name``; every placeholder must have a value."""
    template = Template(_source(name))
    missing = sorted(set(template.get_identifiers()) - set(values))
    if missing:
        raise TemplateError(f"template {name!r}: no value for {', '.join(missing)}")
    # Substitute into the template only: values are never themselves treated as templates.
    text = template.substitute({key: str(value) for key, value in values.items()})
    first, _, rest = text.partition("\n")
    if first.startswith("Subject: "):
        return Rendered(subject=first.removeprefix("Subject: ").strip(), body=rest.strip("\n"))
    return Rendered(subject="", body=text)
