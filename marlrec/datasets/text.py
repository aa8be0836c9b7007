"""Item texts from item-file columns through a `str.format` template."""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence

import pandas as pd

from marlrec.registry import PluginError


def template_fields(template: str, allowed: Sequence[str], where: str) -> list[str]:
    """The fields a `str.format` template uses, each of which must be one of `allowed`."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise PluginError(f"{where}: text_template {template!r} is malformed: {exc}") from None
    for f in fields:
        if f not in allowed:
            raise PluginError(
                f"{where}: text_template uses unknown field {{{f}}}; available: "
                + ", ".join(f"{{{a}}}" for a in allowed)
            )
    return fields


def render(template: str, columns: Mapping[str, Sequence[str]], n: int) -> list[str]:
    """Fill the template per item; a field left empty leaves no empty "()" behind."""
    texts = (template.format_map({k: v[i] for k, v in columns.items()}) for i in range(n))
    return [_EMPTY_PARENS.sub("", t).strip() for t in texts]


_EMPTY_PARENS = re.compile(r"\s*\(\s*\)")


def as_text(values: pd.Series) -> list[str]:
    """Text cells with missing ones as empty strings."""
    return values.fillna("").astype(str).str.strip().tolist()


def join_sentences(parts: list[str]) -> str:
    """Parts joined by ". ", or by a space after a part that already ends a sentence."""
    text = parts[0] if parts else ""
    for part in parts[1:]:
        text += (" " if text.endswith((".", "!", "?")) else ". ") + part
    return text
