"""The recovery site's CloudFormation templates, as files of this project.

``include/config/cloudformation/recovery-<name>.yaml`` for the plan's two recovery
infrastructures (``minimum`` and ``full``; a plan may name its own file instead, as the
seed kept its templates under /opt/tracktion/infrastructure). The plan's ``recovery_site``
names one, its
parameters and how its Outputs map to endpoints; the plan loader checks those names
against the template's own ``Parameters`` and ``Outputs`` (an outline read here, locally:
no AWS call at load time). CloudFormation itself validates the whole template when
``dr_site_provision`` runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "config" / "cloudformation"
TEMPLATE_NAMES = ("minimum", "full")


class _CloudFormationLoader(yaml.SafeLoader):
    """Reads CloudFormation's short-form tags (``!Ref``, ``!Sub``...) as plain values: the
    outline needs the keys, not the intrinsic functions."""


def _any_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node)
    return loader.construct_scalar(node)  # type: ignore[arg-type]


_CloudFormationLoader.add_multi_constructor("!", _any_tag)


@dataclass(frozen=True)
class TemplateOutline:
    """What a template declares: parameter names (-> whether it has a default) and the
    names of its Outputs."""

    description: str
    parameters: dict[str, bool]
    outputs: frozenset[str]

    @property
    def required_parameters(self) -> list[str]:
        return sorted(name for name, has_default in self.parameters.items() if not has_default)


def template_path(name: str) -> Path:
    return TEMPLATE_DIR / f"recovery-{name}.yaml"


def template_body(path: Path | str) -> str:
    """The template's text, as CloudFormation receives it."""
    return Path(path).read_text(encoding="utf-8")


def template_document(path: Path | str) -> dict[str, Any]:
    """The template at ``path`` as data, intrinsic functions read as plain values
    (ValueError when it cannot be read)."""
    path = Path(path)
    try:
        document = yaml.load(path.read_text(encoding="utf-8"), Loader=_CloudFormationLoader)  # noqa: S506 - a SafeLoader subclass
    except OSError as exc:
        raise ValueError(f"cannot read the template {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"the template {path} is not valid YAML: {exc}") from None
    if not isinstance(document, dict):
        raise ValueError(f"the template {path} is not a YAML mapping")
    return document


def template_outline(path: Path | str) -> TemplateOutline:
    """Parameters and Outputs of the template at ``path`` (ValueError when it cannot be
    read). Cached per file version: a long-lived dag-processor sees an edited template."""
    try:
        version = Path(path).stat().st_mtime_ns
    except OSError:
        version = 0
    return _outline(str(path), version)


@lru_cache(maxsize=16)
def _outline(path: str, version: int) -> TemplateOutline:
    document = template_document(path)
    parameters = document.get("Parameters") or {}
    return TemplateOutline(
        description=str(document.get("Description", "")),
        parameters={str(k): "Default" in (v or {}) for k, v in parameters.items()},
        outputs=frozenset(str(k) for k in (document.get("Outputs") or {})),
    )
