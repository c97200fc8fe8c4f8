"""The project files and pages point at things that exist.

- every relative link of README.md and CONTRIBUTING.md resolves to a file (the site build checks the
  pages under docs/ itself, in strict mode);
- every repository path CONTRIBUTING.md names in backticks exists;
- every ``--option`` a ``chexgen COMMAND`` line of the docs uses is an option of that command
  (so a renamed or removed option cannot linger in a page);
- CITATION.cff and CHANGELOG.md have the fields people and tools expect.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest
import yaml

from chexgen.cli import COMMANDS, build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _relative_links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    return [t for t in LINK.findall(text) if not re.match(r"^[a-z]+:", t) and not t.startswith("#")]


@pytest.mark.parametrize("name", ["README.md", "CONTRIBUTING.md"])
def test_relative_links_resolve(name):
    broken = [t for t in _relative_links(ROOT / name) if not (ROOT / t.split("#", 1)[0]).exists()]
    assert not broken, f"{name}: links to missing files: {broken}"


def test_contributing_names_existing_paths():
    text = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    paths = set(re.findall(r"`((?:src|tests|docs|benchmarks|scripts)/[\w./-]+)`", text))
    paths = {p for p in paths if "<" not in p}
    assert len(paths) >= 10, paths
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"CONTRIBUTING.md names paths that do not exist: {missing}"


def _command_lines(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, argv after `chexgen`) for every chexgen invocation in the page's code blocks."""
    out = []
    in_block, lang, buf, start = False, "", "", 0
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.startswith("```"):
            in_block, lang = (not in_block), line[3:].strip()
            continue
        if not in_block or lang not in ("bash", ""):
            continue
        if not buf:
            start = no
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        for m in re.finditer(r"(?:^|[\s;(|&])(?:chexgen|-m chexgen\.cli)\s+([^|;&#)]*)", buf):
            try:
                argv = shlex.split(m.group(1), comments=False)
            except ValueError:
                continue
            if argv and argv[0] in COMMANDS:
                out.append((start, argv))
        buf = ""
    return out


def _options(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """Option strings of the (sub)command ``argv`` names, following nested subcommands."""
    sub = parser
    for word in argv:
        actions = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
        if not actions or word not in actions[0].choices:
            break
        sub = actions[0].choices[word]
    return {s for a in sub._actions for s in a.option_strings}


PAGES = sorted(p for p in DOCS.rglob("*.md")) + [ROOT / "README.md"]


def test_documented_options_exist():
    problems = []
    seen = 0
    for page in PAGES:
        for line, argv in _command_lines(page):
            seen += 1
            parser = build_parser(argv[0])
            known = _options(parser, argv)
            for token in argv[1:]:
                if token.startswith("--"):
                    opt = token.split("=", 1)[0]
                    if opt not in known:
                        problems.append(f"{page.relative_to(ROOT)}:{line}: chexgen {argv[0]}: unknown option {opt}")
    assert seen > 50, seen
    assert not problems, "\n".join(problems)


def test_citation_cff_fields():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    assert cff["cff-version"] == "1.2.0"
    for key in ("message", "title", "authors", "version", "license"):
        assert cff.get(key), key
    paper = cff["references"][0]
    assert paper["title"] == "A Generative Foundation Model for Chest Radiography"
    assert any(i["value"] == "arXiv:2509.03903" for i in paper["identifiers"])
    assert all(a.get("family-names") and a.get("given-names") for a in paper["authors"])


def test_changelog_has_unreleased_section():
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "## [Unreleased]" in text
    assert re.search(r"^### Documentation$", text, re.M)


def test_sphinx_roles_render_as_code_in_the_api_pages():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "docs" / "hooks" / "sphinx_roles.py"
    spec = importlib.util.spec_from_file_location("sphinx_roles", path)
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    html = ("through :class:<code>GeneratorBackend</code>, one :class:<code>~chexgen.data.manifest.Record</code> "
            "per image, :func:<code>chexgen.evaluation.metrics.fid</code> and a:b:<code>kept</code>")
    assert hook.on_page_content(html) == (
        "through <code>GeneratorBackend</code>, one <code>Record</code> per image, "
        "<code>chexgen.evaluation.metrics.fid</code> and a:b:<code>kept</code>")
    assert "hooks/sphinx_roles.py" in (path.parents[2] / "mkdocs.yml").read_text()  # the build uses it
