"""Every code block of the getting-started and tutorial pages runs, in order, on tiny data.

Each page is one test: its ```bash and ```python blocks run one after another in one fresh
folder (what a reader does in a terminal), bash with ``set -euo pipefail``, python as a script
in its own process. A block preceded by an HTML comment ``<!-- skip: REASON -->`` is not run
(installs, hub weights, a GPU, a server that waits for people); the reason must be given.

The pages' settings are already tiny (few steps, few images, small cohorts); nothing here
shrinks them behind the reader's back. ``CHEXGEN_DOCS_KEEP=DIR`` keeps each page's folder
under DIR (used to refresh the pictures under docs/assets/tutorials/).
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = ["getting-started.md"] + sorted(
    str(p.relative_to(DOCS)) for p in (DOCS / "tutorials").glob("*.md") if p.name != "index.md")
FENCE = re.compile(r"^```(\w+)?(.*)$")
SKIP = re.compile(r"^<!--\s*skip:\s*(.*?)\s*-->$")
RUNNABLE = {"bash", "python"}
BLOCK_TIMEOUT_S = 600


@dataclass
class Block:
    page: str
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    skip: str | None  # the reason, when marked skipped


def extract_blocks(path: Path, root: Path = DOCS) -> list[Block]:
    """The fenced blocks of a Markdown page with their language and skip marker."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i].strip())
        if m and lines[i].strip() != "```":
            lang, start, body = (m.group(1) or ""), i, []
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            if i == len(lines):
                raise AssertionError(f"{path}:{start + 1}: code block never closed")
            prev = next((lines[k].strip() for k in range(start - 1, -1, -1) if lines[k].strip()), "")
            s = SKIP.match(prev)
            blocks.append(Block(str(path.relative_to(root)), start + 1, lang, "\n".join(body) + "\n",
                                s.group(1) if s else None))
        i += 1
    return blocks


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # The checkout's sources first (a worktree next to an editable install of another checkout),
    # and this interpreter's scripts (`chexgen`) first on PATH.
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src")] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                                                if p])
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["HF_HUB_OFFLINE"] = "1"
    env.setdefault("MPLBACKEND", "Agg")
    return env


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_block(block: Block, cwd: Path, index: int) -> None:
    """Run one block in ``cwd``; fail with its output and where it lives in the page.

    Prints the block's wall and CPU seconds (``pytest -s`` shows them: the budget is CPU time, since a
    shared machine stretches wall time)."""
    wall, cpu = time.perf_counter(), _children_cpu_s()
    if block.lang == "bash":
        cmd = ["bash", "-euo", "pipefail", "-c", block.code]
    else:
        script = cwd / f".snippet_{index:02d}.py"
        script.write_text(block.code, encoding="utf-8")
        cmd = [sys.executable, script.name]
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S,
                          stdin=subprocess.DEVNULL)
    print(f"docs/{block.page}:{block.line}: {block.lang} {time.perf_counter() - wall:.1f} s wall, "
          f"{_children_cpu_s() - cpu:.1f} s CPU")
    if proc.returncode != 0:
        pytest.fail(f"docs/{block.page}:{block.line}: {block.lang} block exited {proc.returncode}\n--- code\n"
                    f"{block.code}--- stdout (tail)\n{proc.stdout[-4000:]}\n--- stderr (tail)\n{proc.stderr[-4000:]}",
                    pytrace=False)


def test_pages_have_runnable_blocks_and_skip_reasons():
    assert len(PAGES) >= 7, PAGES  # getting started + six tutorials
    for page in PAGES:
        blocks = extract_blocks(DOCS / page)
        runnable = [b for b in blocks if b.lang in RUNNABLE and b.skip is None]
        assert runnable, f"docs/{page} has no block that runs"
        for b in blocks:
            assert b.skip is None or b.skip.strip(), f"docs/{page}:{b.line}: skip marker without a reason"
            if b.lang in RUNNABLE and b.skip is None:
                assert "pip install" not in b.code, f"docs/{page}:{b.line}: installs must be marked skip"
            if b.skip and ".ci/run" in b.skip:  # "runs in CI elsewhere" must be true
                command = " ".join(b.code.split()[1:3])  # e.g. "demo --quick" after the program name
                assert command in (ROOT / ".ci" / "run").read_text(), f"docs/{page}:{b.line}: {command!r} not in .ci/run"


def test_extract_blocks_reads_languages_and_skips(tmp_path):
    page = tmp_path / "docs" / "p.md"
    page.parent.mkdir()
    page.write_text("# t\n\n```bash\necho a\n```\n\n<!-- skip: needs a GPU -->\n```python\nimport x\n```\n"
                    "```text\nout\n```\n", encoding="utf-8")
    blocks = extract_blocks(page, root=tmp_path / "docs")
    assert [(b.lang, b.line, b.skip) for b in blocks] == [("bash", 3, None), ("python", 8, "needs a GPU"),
                                                          ("text", 11, None)]
    assert blocks[0].code == "echo a\n"


@pytest.mark.parametrize("page", PAGES)
def test_page_snippets_run(page, tmp_path):
    keep = os.environ.get("CHEXGEN_DOCS_KEEP")
    work = Path(keep) / Path(page).stem if keep else tmp_path / "work"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    blocks = [b for b in extract_blocks(DOCS / page) if b.lang in RUNNABLE and b.skip is None]
    for k, block in enumerate(blocks):
        run_block(block, work, k)
