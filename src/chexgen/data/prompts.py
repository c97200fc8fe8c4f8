"""Prompt text for official ChexGen checkpoints: caption cleaning and demographic prompts.

Official checkpoints were trained on T5 embeddings of *cleaned* captions. The
official code inherits its cleaning from PixArt-alpha (which inherits it from
DeepFloyd IF): the caption is lower-cased, URLs / HTML / brackets / odd
punctuation are removed, and the whole routine runs **twice** per prompt. A
converted official model only sees the text distribution it was trained on if
chexgen cleans prompts the same way, so :func:`clean_caption` reproduces that
routine rule for rule (a test compares it with diffusers' copy of the routine).

Some rules were written for web alt-text and do surprising things to clinical
text; they are kept on purpose for parity. Worth knowing:

- ``(``, ``)``, ``[``, ``]``, ``{``, ``}``, ``/``, ``|``, ``*``, ``#``, ``&``, ``~``,
  ``@`` become spaces ("PA/AP" -> "pa ap");
- sizes written as ``3x4`` or ``2.5x1.0`` are deleted (``3 x 4`` survives);
- tokens such as ``t12l1`` (letters-digits-letters) and numbers of 6+ digits are deleted;
- with more than three ``-`` / ``_`` in a prompt, all of them become spaces.

:func:`demographic_prompt` builds the official conditioning prompt
``"sex:Male, age:71.0, race:Black. <impression>"`` from a manifest
:class:`~chexgen.data.manifest.Record`.
"""

from __future__ import annotations

import html
import re
import urllib.parse
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Callable, Iterable, Sequence

from chexgen.errors import ChexgenError

__all__ = [
    "CLEANING_MODES",
    "clean_caption",
    "clean_prompt",
    "clean_prompts",
    "demographic_prompt",
    "demographic_prompts",
    "DemographicPromptConfig",
]

#: ``"official"``: the official cleaning run twice (what official checkpoints saw in training);
#: ``"lower"``: lower-case and strip only (PixArt's behaviour with cleaning switched off);
#: ``"none"``: the prompt as given.
CLEANING_MODES = ("official", "lower", "none")


# --------------------------------------------------------------------------- html
class _TextOnly(HTMLParser):
    """Collects the character data of an HTML fragment (entities decoded, tags and comments dropped)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def _html_text(text: str) -> str:
    parser = _TextOnly()
    parser.feed(text)
    parser.close()
    return "".join(parser.parts)


# --------------------------------------------------------------------------- rules
# A rule is (compiled pattern, replacement). The order is the order of the official routine.
_Rule = tuple["re.Pattern[str]", str]


def _rules(*pairs: tuple[str, str]) -> list[_Rule]:
    return [(re.compile(p), r) for p, r in pairs]


_URL_TAIL = r"[a-zA-Z0-9.\-]+[.](?:com|co|ru|net|org|edu|gov|it)[\w/-]*\b\/?(?!@)"
_BEFORE_HTML = _rules(
    ("<person>", "person"),
    (r"\b((?:https?:(?:\/{1,3}|[a-zA-Z0-9%])|" + _URL_TAIL + "))", ""),
    (r"\b((?:www:(?:\/{1,3}|[a-zA-Z0-9%])|" + _URL_TAIL + "))", ""),
)

# CJK blocks (strokes, katakana extensions, enclosed letters, compatibility, unified ideographs).
_CJK_BLOCKS = ("\u31c0-\u31ef", "\u31f0-\u31ff", "\u3200-\u32ff", "\u3300-\u33ff",
               "\u3400-\u4dbf", "\u4dc0-\u4dff", "\u4e00-\u9fff")
_DASHES = ("\u002d\u058a\u05be\u1400\u1806\u2010-\u2015\u2e17\u2e1a\u2e3a\u2e3b\u2e40"
           "\u301c\u3030\u30a0\ufe31\ufe32\ufe58\ufe63\uff0d")
_BAD_PUNCT = "#®•©™&@·º½¾¿¡§~" + r"\)\(\]\[\}\{\|\\\/\*"

_AFTER_HTML = _rules(
    (r"@[\w\d]+\b", ""),                                   # @nicknames
    *((f"[{block}]+", "") for block in _CJK_BLOCKS),
    (f"[{_DASHES}]+", "-"),                                # every dash -> "-"
    ("[`´«»“”¨]", '"'),                                    # double quotes -> "
    ("[‘’]", "'"),                                         # single quotes -> '
    (r"&quot;?", ""),
    (r"&amp", ""),
    (r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}", " "),          # IP addresses
    (r"\d:\d\d\s+$", ""),                                  # trailing article ids
    (r"\\n", " "),                                         # literal backslash-n
    (r"#\d{1,3}\b", ""),
    (r"#\d{5,}\b", ""),
    (r"\b\d{6,}\b", ""),                                   # long numbers
    (r"[\S]+\.(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)", ""),  # file names
    (r"[\"\']{2,}", '"'),
    (r"[\.]{2,}", " "),                                    # ellipses
    (f"[{_BAD_PUNCT}]{{1,}}", " "),                        # brackets, slashes, symbols
    (r"\s+\.\s+", " "),                                    # lone dots
)
_DASH_OR_UNDERSCORE = re.compile(r"(?:\-|\_)")

_AFTER_UNICODE_FIX = _rules(
    (r"\b[a-zA-Z]{1,3}\d{3,15}\b", ""),                    # ids like ab1234
    (r"\b[a-zA-Z]+\d+[a-zA-Z]+\b", ""),                    # ab12cd
    (r"\b\d+[a-zA-Z]+\d+\b", ""),                          # 12ab34
    (r"(worldwide\s+)?(free\s+)?shipping", ""),
    (r"(free\s)?download(\sfree)?", ""),
    (r"\bclick\b\s(?:for|on)\s\w+", ""),
    (r"\b(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)(\simage[s]?)?", ""),
    (r"\bpage\s+\d+\b", ""),
    (r"\b\d*[a-zA-Z]+\d+[a-zA-Z]+\d+[a-zA-Z\d]*\b", " "),  # mixed alnum codes
    (r"\b\d+\.?\d*[xх×]\d+\.?\d*\b", ""),                  # sizes such as 3x4
    (r"\b\s+\:\s+", ": "),
    (r"(\D[,\./])\b", r"\1 "),                             # space after punctuation
    (r"\s+", " "),
    (r"^[\"\']([\w\W]+)[\"\']$", r"\1"),                   # surrounding quotes
    (r"^[\'\_,\-\:;]", ""),
    (r"[\'\_,\-\:\-\+]$", ""),
    (r"^\.\S+$", ""),
)


def _apply(rules: Iterable[_Rule], text: str) -> str:
    for pattern, repl in rules:
        text = pattern.sub(repl, text)
    return text


def _fix_unicode(text: str) -> str:
    try:
        import ftfy
    except ImportError as err:  # pragma: no cover - ftfy is a declared dependency
        raise ChexgenError("official prompt cleaning needs the 'ftfy' package: pip install ftfy") from err
    return ftfy.fix_text(text)


def clean_caption(caption: str) -> str:
    """One pass of the official (PixArt / DeepFloyd IF) caption cleaning.

    Lower-cases, removes URLs, HTML, CJK characters, brackets and other symbols,
    normalises dashes and quotes, repairs mojibake (ftfy) and collapses spaces.
    The official text encoder applies it twice; use :func:`clean_prompt` for that.
    """
    text = urllib.parse.unquote_plus(str(caption)).strip().lower()
    text = _apply(_BEFORE_HTML, text)
    text = _html_text(text)
    text = _apply(_AFTER_HTML, text)
    if len(_DASH_OR_UNDERSCORE.findall(text)) > 3:  # this-is-a-slug / this_is_a_slug
        text = _DASH_OR_UNDERSCORE.sub(" ", text)
    text = _fix_unicode(text)
    text = html.unescape(html.unescape(text))
    text = _apply(_AFTER_UNICODE_FIX, text)
    return text.strip()


def clean_prompt(prompt: str, mode: str = "official") -> str:
    """Clean one prompt for the text encoder; ``mode`` is one of :data:`CLEANING_MODES`."""
    if mode == "official":
        return clean_caption(clean_caption(prompt))
    if mode == "lower":
        return str(prompt).lower().strip()
    if mode == "none":
        return str(prompt)
    raise ChexgenError(f"unknown prompt cleaning mode {mode!r}; expected one of {', '.join(CLEANING_MODES)}")


def clean_prompts(prompts: Sequence[str], mode: str = "official") -> list[str]:
    """:func:`clean_prompt` over a list."""
    return [clean_prompt(p, mode) for p in prompts]


# --------------------------------------------------------------------------- demographic prompts
_SEX_WORDS = {"M": "Male", "F": "Female", "O": "Other"}


@dataclass(frozen=True)
class DemographicPromptConfig:
    """How :func:`demographic_prompt` turns a record into text.

    Args:
        text_field: record field holding the findings text (``"impression"``, the official choice,
            or ``"report"``); when it is empty the other one is used.
        include_missing: write ``"age:unknown"`` style parts for missing values instead of
            leaving the part out.
        missing_word: the word used by ``include_missing``.
    """

    text_field: str = "impression"
    include_missing: bool = False
    missing_word: str = "unknown"


def _format_age(age: float) -> str:
    # The official prompts print the age as a Python float ("71.0", "65.5").
    return repr(float(age))


def demographic_prompt(record: object, config: DemographicPromptConfig | None = None,
                       text: str | None = None) -> str:
    """``"sex:Male, age:71.0, race:Black. <impression>"`` from a manifest record.

    ``record`` needs ``sex`` ("M"/"F"/"O" or a word), ``age``, ``race`` and the text
    fields of :class:`~chexgen.data.manifest.Record`; ``text`` overrides the record's
    text. Missing demographics are left out (or written as ``unknown`` with
    ``include_missing``). Raises :class:`ChexgenError` when there is neither text nor
    any demographic value, since an empty prompt is almost always a data error.
    """
    cfg = config or DemographicPromptConfig()
    if cfg.text_field not in ("impression", "report"):
        raise ChexgenError(f"text_field must be 'impression' or 'report', got {cfg.text_field!r}")
    sex = getattr(record, "sex", None)
    age = getattr(record, "age", None)
    race = getattr(record, "race", None)
    values: list[tuple[str, str | None]] = [
        ("sex", _SEX_WORDS.get(sex, sex) if sex else None),
        ("age", _format_age(age) if age is not None else None),
        ("race", race or None),
    ]
    parts = [f"{k}:{v}" for k, v in values if v is not None]
    if cfg.include_missing:
        parts = [f"{k}:{v if v is not None else cfg.missing_word}" for k, v in values]
    if text is None:
        other = "report" if cfg.text_field == "impression" else "impression"
        text = getattr(record, cfg.text_field, None) or getattr(record, other, None)
    text = (text or "").strip()
    if not parts and not text:
        rid = getattr(record, "id", "<record>")
        raise ChexgenError(f"record {rid}: no sex, age, race, impression or report to build a prompt from")
    head = ", ".join(parts)
    if head and text:
        return f"{head}. {text}"
    return f"{head}." if head else text


def demographic_prompts(records: Iterable[object], config: DemographicPromptConfig | None = None,
                        clean: str | Callable[[str], str] = "none") -> list[str]:
    """Prompts for many records, optionally cleaned (``clean`` is a mode name or a function)."""
    fn = clean if callable(clean) else (lambda p: clean_prompt(p, clean))  # type: ignore[arg-type]
    return [fn(demographic_prompt(r, config)) for r in records]

