"""Every code block of the getting-started and tutorial pages runs, in order, on tiny data.

Each page is one test: its ```bash and ```python blocks run one after another in one fresh
folder (what a reader does in a terminal), bash with ``set -euo pipefail``, python as a script
in its own process. A block preceded by an HTML comment ``<!-- skip: REASON -->`` is not run
(installs, hub weights, a GPU, a server that waits for people); the reason must be given.

The pages' settings are already tiny (few steps, few images, small cohorts); nothing here
shrinks them behind the reader's back. Pages run two at a time (``CHEXGEN_DOCS_WORKERS``), each
block with ``OMP_NUM_THREADS`` = cores / workers unless set, so the two share the cores instead of
spinning on them. ``pytest -s`` prints each block's wall and CPU seconds. ``CHEXGEN_DOCS_KEEP=DIR``
keeps each page's folder under DIR (used to refresh the pictures under docs/assets/tutorials/).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
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


def _env(threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    # The checkout's sources first (a worktree next to an editable install of another checkout),
    # and this interpreter's scripts (`chexgen`) first on PATH.
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src")] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                                                if p])
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["HF_HUB_OFFLINE"] = "1"
    env.setdefault("MPLBACKEND", "Agg")
    if threads is not None:  # pages share the cores: no more torch threads than cores per page
        env.setdefault("OMP_NUM_THREADS", str(threads))
    return env


@dataclass
class BlockRun:
    block: Block
    wall_s: float
    cpu_s: float
    returncode: int
    stdout: str
    stderr: str


def run_block(block: Block, cwd: Path, index: int, threads: int | None = None) -> BlockRun:
    """Run one block in ``cwd``; its wall and CPU seconds are measured on its own process tree
    (``os.wait4``), so pages running side by side do not blur each other's numbers."""
    if block.lang == "bash":
        cmd = ["bash", "-euo", "pipefail", "-c", block.code]
    else:
        script = cwd / f".snippet_{index:02d}.py"
        script.write_text(block.code, encoding="utf-8")
        cmd = [sys.executable, script.name]
    out_path, err_path = cwd / f".snippet_{index:02d}.out", cwd / f".snippet_{index:02d}.err"
    start = time.perf_counter()
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen(cmd, cwd=cwd, env=_env(threads), stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        timer = threading.Timer(BLOCK_TIMEOUT_S, lambda: os.killpg(proc.pid, signal.SIGKILL))
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
    return BlockRun(block, time.perf_counter() - start, usage.ru_utime + usage.ru_stime, proc.returncode,
                    out_path.read_text(errors="replace"), err_path.read_text(errors="replace"))


def run_page(page: str, work: Path, threads: int | None = None, root: Path = DOCS) -> tuple[list[BlockRun], str | None]:
    """Every runnable block of ``page`` in order in ``work``; stops at the first failure (its report)."""
    runs: list[BlockRun] = []
    blocks = [b for b in extract_blocks(root / page, root) if b.lang in RUNNABLE and b.skip is None]
    for k, block in enumerate(blocks):
        run = run_block(block, work, k, threads)
        runs.append(run)
        if run.returncode != 0:
            return runs, (f"docs/{block.page}:{block.line}: {block.lang} block exited {run.returncode}\n--- code\n"
                          f"{block.code}--- stdout (tail)\n{run.stdout[-4000:]}\n--- stderr (tail)\n"
                          f"{run.stderr[-4000:]}")
    return runs, None


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


def test_run_page_shares_the_folder_skips_and_stops_at_the_first_failure(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "p.md").write_text("```bash\necho hi > a.txt\n```\n\n<!-- skip: needs a GPU -->\n```bash\nexit 3\n```\n\n"
                               "```python\nprint(open('a.txt').read().strip())\n```\n\n```bash\nfalse\n```\n\n"
                               "```bash\necho never\n```\n", encoding="utf-8")
    work = tmp_path / "work"
    work.mkdir()
    runs, failure = run_page("p.md", work, root=docs)
    assert [r.block.line for r in runs] == [1, 10, 14]  # the skipped block did not run, the last never ran
    assert runs[1].stdout.strip() == "hi" and runs[2].returncode == 1
    assert failure.startswith("docs/p.md:14: bash block exited 1")


def _workdir(page: str, tmp_root: Path) -> Path:
    keep = os.environ.get("CHEXGEN_DOCS_KEEP")
    work = Path(keep) / Path(page).stem if keep else tmp_root / Path(page).stem
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    return work


@pytest.fixture(scope="module")
def page_runs(request, tmp_path_factory):
    """Start every selected page at once on ``CHEXGEN_DOCS_WORKERS`` threads (default 2: the pages are
    independent, and one page rarely keeps two cores busy); each test then waits for its own page."""
    selected = [item.callspec.params["page"] for item in request.session.items
                if getattr(item, "originalname", None) == "test_page_snippets_run"]
    workers = max(1, int(os.environ.get("CHEXGEN_DOCS_WORKERS", "2")))
    threads = max(1, (os.cpu_count() or 1) // workers) if workers > 1 else None
    root = tmp_path_factory.mktemp("docs-snippets")
    # Longest pages first, so the two lanes finish together.
    order = sorted(selected, key=lambda p: -len(extract_blocks(DOCS / p)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        yield {page: pool.submit(run_page, page, _workdir(page, root), threads) for page in order}


@pytest.mark.parametrize("page", PAGES)
def test_page_snippets_run(page, page_runs):
    runs, failure = page_runs[page].result()
    for run in runs:
        print(f"docs/{page}:{run.block.line}: {run.block.lang} {run.wall_s:.1f} s wall, {run.cpu_s:.1f} s CPU")
    print(f"docs/{page}: {sum(r.wall_s for r in runs):.1f} s wall, {sum(r.cpu_s for r in runs):.1f} s CPU in all")
    if failure:
        pytest.fail(failure, pytrace=False)
