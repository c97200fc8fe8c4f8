"""Prompt templates: each generator gets prompts in the format it was trained on.

A template is text with named fields filled from a prompt's manifest record, e.g. RoentGen-v2's
demographic prompts ``"{age} year old {race} {sex}. {impression}"`` ->
``"50 year old White female. Normal chest radiograph."``. Fields:

* ``{impression}``: the prompt text itself (the record's impression, else its report, or the
  ``--column`` field), so ``"{impression}"`` is the identity template and works on plain prompts;
* ``{report}``: the record's report;
* ``{sex}``: ``male`` / ``female`` / ``other`` (lower case, as RoentGen-v2 writes it); ``{Sex}``
  capitalised;
* ``{age}``: whole years (``71.9`` -> ``71``: "71 year old");
* ``{race}``: as stored in the record; ``{view}``: PA / AP / LAT / LL.

Named templates (:data:`NAMED_TEMPLATES`) can be given by name. A template that names a field a
record lacks, an unknown field, or a demographic field on prompts that came without records is
refused with one error naming the record and the field, before any model is loaded.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, replace
from typing import Any, Sequence

from chexgen.errors import ChexgenError
from chexgen.generation.backends.base import GeneratedBatch, GeneratorBackend
from chexgen.generation.prompts import PromptItem

__all__ = ["NAMED_TEMPLATES", "TEMPLATE_FIELDS", "PromptTemplate", "parse_template", "apply_template",
           "TemplatedBackend"]

#: templates known by name
NAMED_TEMPLATES: dict[str, str] = {
    "impression": "{impression}",
    # RoentGen-v2 (stanfordmimi/RoentGen-v2) model card: "50 year old White female. Normal chest radiograph."
    "roentgen-v2": "{age} year old {race} {sex}. {impression}",
}

_SEX_WORDS = {"M": "male", "F": "female", "O": "other"}

#: the fields a template may name
TEMPLATE_FIELDS = ("impression", "report", "sex", "Sex", "age", "race", "view")


@dataclass(frozen=True)
class PromptTemplate:
    """A parsed template: its ``name`` (a named template, else ``None``), text and the fields it uses."""

    text: str
    fields: tuple[str, ...]
    name: str | None = None

    @property
    def needs_records(self) -> bool:
        """Whether it names any field beyond the prompt text itself."""
        return any(f != "impression" for f in self.fields)

    def describe(self) -> str:
        """What provenance records: the name and the text (``"roentgen-v2: {age} year old ..."``)."""
        return f"{self.name}: {self.text}" if self.name else self.text


def parse_template(template: str) -> PromptTemplate:
    """A named template (:data:`NAMED_TEMPLATES`) or a template text; unknown fields are refused."""
    if not isinstance(template, str) or not template.strip():
        raise ChexgenError(f"prompt template must be text, got {template!r}")
    name = template.strip() if template.strip() in NAMED_TEMPLATES else None
    text = NAMED_TEMPLATES[name] if name else template
    fields: list[str] = []
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as err:
        raise ChexgenError(f"prompt template {text!r}: {err} (write literal braces as {{{{ and }}}})") from None
    for _, field, spec, conv in parsed:
        if field is None:
            continue
        if field == "" or field.isdigit():
            raise ChexgenError(f"prompt template {text!r}: every field needs a name, e.g. {{impression}}")
        if field not in TEMPLATE_FIELDS or spec or conv:
            raise ChexgenError(f"prompt template {text!r}: unknown field {{{field}{'!' + conv if conv else ''}"
                               f"{':' + spec if spec else ''}}}; fields: "
                               + ", ".join("{" + f + "}" for f in TEMPLATE_FIELDS)
                               + f"; named templates: {', '.join(NAMED_TEMPLATES)}")
        if field not in fields:
            fields.append(field)
    if not fields:
        raise ChexgenError(f"prompt template {text!r} names no field; it would give every image the same prompt")
    return PromptTemplate(text=text, fields=tuple(fields), name=name)


def _field_value(item: PromptItem, field: str) -> Any:
    if field == "impression":
        return item.prompt
    rec = item.source
    if rec is None:
        return None
    if field in ("sex", "Sex"):
        if not rec.sex:
            return None
        word = _SEX_WORDS.get(rec.sex, str(rec.sex).lower())
        return word.capitalize() if field == "Sex" else word
    if field == "age":
        return None if rec.age is None else str(int(rec.age))
    value = getattr(rec, field, None)
    return value.strip() if isinstance(value, str) and value.strip() else None


def apply_template(items: Sequence[PromptItem], template: "str | PromptTemplate") -> list[PromptItem]:
    """The prompts rendered through ``template`` (records kept); every field is checked first."""
    tpl = template if isinstance(template, PromptTemplate) else parse_template(template)
    out: list[PromptItem] = []
    for it in items:
        values: dict[str, Any] = {}
        for field in tpl.fields:
            value = _field_value(it, field)
            if value is None:
                where = it.where or "prompt"
                if it.source is None:
                    raise ChexgenError(f"{where}: prompt template {tpl.describe()!r} needs {{{field}}}, which only "
                                       "manifest records have; give the prompts as a manifest "
                                       "(--prompts FILE --manifest)")
                raise ChexgenError(f"{where} (record {it.source.id}): prompt template {tpl.describe()!r} needs "
                                   f"{{{field}}} but the record has no {field.lower()}")
            values[field] = value
        out.append(replace(it, prompt=tpl.text.format(**values).strip()))
    return out


class TemplatedBackend(GeneratorBackend):
    """A backend whose settings (hence every image's provenance) also record the prompt template used."""

    def __init__(self, inner: GeneratorBackend, template: PromptTemplate) -> None:
        self.inner = inner
        self.template = template
        self.name = inner.name
        self.supports_conditions = inner.supports_conditions
        self.condition_policy = inner.condition_policy
        self.condition_palette = inner.condition_palette

    @property
    def resolution(self) -> int:
        return self.inner.resolution

    def settings(self) -> dict[str, Any]:
        return {**self.inner.settings(), "prompt_template": self.template.describe()}

    def check_condition(self, condition) -> None:
        self.inner.check_condition(condition)

    def generate(self, prompts, seeds, conditions=None) -> GeneratedBatch:
        return self.inner.generate(prompts, seeds, conditions)
