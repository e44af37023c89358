"""The README and docs/*.md: every Python block runs, every link and anchor resolves, and the
README's commands are the ones CI runs.

Which blocks run, and how: every ```python block of README.md and docs/*.md is executed as it
is, in a fresh namespace, in a temporary working directory (one test id per block:
``page#section``, with ``-2``, ``-3`` for a section's later blocks). Blocks written for a GPU take
the device there is (``"cuda" if gf.cuda.is_available() else "cpu"``), so they run on every
machine. ```bash blocks (installs, benchmark and CLI commands) and plain ``` blocks (output,
listings) are not executed here; the README's test command is checked against .ci/run below.
Several blocks are also run by the test file of their area, which checks what they compute
(tests/test_optim.py for docs/optimizers.md#optimizers, ...): they find them through
tests/docs_util.py by page and section title.
"""

import re
import shlex

import numpy as np
import pytest
from docs_util import PAGES, ROOT, github_slug, markdown_slug, parse, python_block, rel

README = ROOT / "README.md"


def _python_blocks():
    out = []
    for page in PAGES:
        seen = {}
        for b in parse(page)[1]:
            if b.lang != "python":
                continue
            key = f"{b.page}#{github_slug(b.heading)}"
            seen[key] = seen.get(key, 0) + 1
            out.append(pytest.param(b, id=key if seen[key] == 1 else f"{key}-{seen[key]}"))
    return out


@pytest.mark.parametrize("block", _python_blocks())
def test_code_block_runs(block, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # blocks that write a file (a checkpoint) write it here
    exec(compile(block.code, f"{block.page}:{block.line}", "exec"), {"__name__": "__main__"})


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_the_parser_sees_every_python_block(page):
    # a fence it misread would silently run nothing
    found = sum(b.lang == "python" for b in parse(page)[1])
    assert found == len(re.findall(r"^```python\s*$", page.read_text(), re.M))


def test_quick_start_runs_and_fits(capsys):
    scope = {}
    exec(compile(python_block("README.md", "Quick start"), "README quick start", "exec"), scope)
    model = scope["model"]
    np.testing.assert_allclose(model.weight.data.ravel(), [2.0, -1.0, 0.5], atol=1e-3)
    np.testing.assert_allclose(model.bias.data, [0.3], atol=1e-3)


def test_data_loading_and_checkpoints_example_runs(capsys):
    block = python_block("docs/data.md", "Data loading and checkpoints")
    scope = {}
    exec(compile(block, "docs/data.md data loading and checkpoints", "exec"), scope)
    assert scope["same"] is True  # resumed training is bitwise the uninterrupted run
    assert scope["accuracy"] > 0.85


def test_gpu_section_example_runs_on_the_device_there_is(capsys):
    # on a machine without a GPU (or a CPU-only build) the same code runs on the CPU
    scope = {}
    exec(compile(python_block("docs/cuda.md", "GPU (CUDA)"), "docs/cuda.md GPU", "exec"), scope)
    assert scope["model"][0].weight.device == scope["device"]
    loss, dev = capsys.readouterr().out.split()
    assert np.isfinite(float(loss)) and dev in ("cpu", "cuda:0")


# ------------------------------------------------------------------------------- links

_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _prose(page):
    """The page's lines outside code blocks, with inline code removed."""
    lines, fence = [], False
    for n, line in enumerate(page.read_text().split("\n"), 1):
        if line.startswith("```"):
            fence = not fence
            continue
        if not fence:
            lines.append((n, re.sub(r"`[^`]*`", "", line)))
    return lines


def _anchors(page):
    return {github_slug(h.text) for h in parse(page)[0]}


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_relative_links_point_to_existing_files_and_anchors(page):
    bad = []
    for n, line in _prose(page):
        for target in _LINK.findall(line):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                bad.append(f"{rel(page)}:{n}: {target}: no such file")
            elif anchor and (dest.suffix != ".md" or anchor not in _anchors(dest)):
                bad.append(f"{rel(page)}:{n}: {target}: no heading with that anchor")
    assert not bad, "\n".join(bad)


def test_link_check_catches_a_broken_link(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# Title\n\n[ok](#title) [bad](#nothing) [gone](missing.md)\n")
    (tmp_path / "missing.md").write_text("")
    ok = [t for _, line in _prose(page) for t in _LINK.findall(line)]
    assert ok == ["#title", "#nothing", "missing.md"]
    assert "nothing" not in _anchors(page) and "title" in _anchors(page)


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_heading_anchors_are_unique_and_the_same_on_github_and_mkdocs(page):
    headings = parse(page)[0]
    slugs = [github_slug(h.text) for h in headings]
    assert len(set(slugs)) == len(slugs), f"two headings with one anchor: {slugs}"
    for h in headings:
        assert github_slug(h.text) == markdown_slug(h.text), h.text


def test_mkdocs_nav_lists_every_docs_page():
    text = (ROOT / "mkdocs.yml").read_text()
    assert re.search(r"^docs_dir:\s*docs\s*$", text, re.M)
    nav = re.findall(r"^\s*-\s*[^:\n]+:\s*(\S+\.md)\s*$", text, re.M)
    assert len(nav) == len(set(nav))
    assert set(nav) == {p.name for p in (ROOT / "docs").glob("*.md")}


# ------------------------------------------------------------------------------- the README


def _newcomer_commands():
    headings, blocks = parse(README)
    return [b.code.strip() for b in blocks
            if b.heading == "Two commands for a newcomer" and b.lang == "bash"]


def test_readme_test_command_is_what_ci_runs():
    study, tests = _newcomer_commands()
    ci = (ROOT / ".ci" / "run").read_text()
    steps = [s.strip() for s in tests.split("&&")]
    assert steps[-1] == "python -m pytest" and re.search(r"^python -m pytest$", ci, re.M)
    readme_install = shlex.split(next(s for s in steps if s.startswith("pip install")))[2:]
    ci_install = next(shlex.split(ln) for ln in ci.splitlines()
                      if ln.startswith("python -m pip install") and ".[test]" in ln)
    assert [a for a in ci_install[4:] if not a.startswith("-")] == readme_install
    assert study.endswith("gradfuse compare && ls results/")


def test_readme_commands_name_extras_that_exist():
    pyproject = (ROOT / "pyproject.toml").read_text()
    extras = set(re.findall(r"^(\w+) = \[", pyproject.split("[project.optional-dependencies]")[1]
                            .split("\n[")[0], re.M))
    used = {e for cmd in _newcomer_commands() for grp in re.findall(r"\.\[([\w,]+)\]", cmd)
            for e in grp.split(",")}
    assert used and used <= extras, (used, extras)


def test_readme_is_a_front_door():
    # the reference lives in docs/; the README stays short (issue 15: under 300 lines)
    assert len(README.read_text().splitlines()) < 300
