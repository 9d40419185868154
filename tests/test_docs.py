"""The documentation stays true: every local link and picture in README.md and docs/*.md exists (and
every #anchor into a page names one of its headings), and every `vexpress_core` / `training` command
in the README's code blocks still parses; the quick start is what CI runs."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]

FENCE = re.compile(r"^[ \t]*(```|~~~).*?^[ \t]*\1[ \t]*$", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`]*`")
# [text](target) and ![alt](target), optionally <target> and a "title"; text may hold one level of [..]
MARKDOWN_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+[\"'][^\"']*[\"'])?\s*\)")
HTML_LINK = re.compile(r"""<[A-Za-z][^>]*?\s(?:src|href)\s*=\s*["']([^"']*)["']""", re.IGNORECASE)
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:|^//")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", re.MULTILINE)


def without_code(text: str) -> str:
    """Markdown with fenced blocks and inline code removed: a `[x](y)` in code is not a link."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def link_targets(text: str) -> list[str]:
    """Every link and picture target of a page (markdown and HTML src/href), outside code, in order."""
    prose = without_code(text)
    return [*MARKDOWN_LINK.findall(prose), *HTML_LINK.findall(prose)]


def local_target(target: str) -> tuple[str, str] | None:
    """(path, fragment) of a link into this repository; None for web links (any URL scheme) and
    pure #anchors."""
    if not target or SCHEME.match(target) or target.startswith("#"):
        return None
    path, _, fragment = target.partition("#")
    return unquote(path.partition("?")[0]), fragment


def broken_links(page: Path, root: Path) -> list[str]:
    """The local targets of `page` that do not exist on disk or point outside `root`."""
    broken = []
    for target in link_targets(page.read_text(encoding="utf-8")):
        local = local_target(target)
        if local is None:
            continue
        resolved = (page.parent / local[0]).resolve()
        if not resolved.exists() or not resolved.is_relative_to(root.resolve()):
            broken.append(target)
    return broken


def heading_anchors(text: str) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces -> hyphens,
    repeats numbered -1, -2, ..."""
    anchors: set[str] = set()
    for heading in HEADING.findall(FENCE.sub("", text)):
        heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")  # link text, code text
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchor, number = slug, 0
        while anchor in anchors:
            number += 1
            anchor = f"{slug}-{number}"
        anchors.add(anchor)
    return anchors


def broken_anchors(page: Path) -> list[str]:
    """Links from `page` to a #fragment of a markdown page (itself or another) that has no such heading."""
    broken = []
    text = page.read_text(encoding="utf-8")
    for target in link_targets(text):
        if target.startswith("#"):
            path, fragment = page, target[1:]
        else:
            local = local_target(target)
            if local is None or not local[1] or not local[0].endswith(".md"):
                continue
            path, fragment = (page.parent / local[0]).resolve(), local[1]
        if path.exists() and fragment not in heading_anchors(path.read_text(encoding="utf-8")):
            broken.append(target)
    return broken


def shell_commands(text: str) -> list[list[str]]:
    """The commands of a page's fenced code blocks, as argument lists: continuation lines joined,
    comments dropped, `&&` / `;` / `||` chains split."""
    commands = []
    for block in FENCE.finditer(text):
        body = re.sub(r"\\\n", " ", block.group(0)).splitlines()[1:-1]
        for line in body:
            try:
                words = shlex.split(line, comments=True)
            except ValueError:  # not shell (a folder listing, a diagram)
                continue
            command: list[str] = []
            for word in [*words, "&&"]:
                if word in ("&&", ";", "||"):
                    if command:
                        commands.append(command)
                    command = []
                else:
                    command.append(word)
    return commands


def pack_commands(text: str) -> list[tuple[tuple[str, ...], str, list[str]]]:
    """(runner, subcommand, arguments) of every `python[3] -m vexpress_core SUB ...` and
    `python[3] training SUB ...` command in the page's code blocks; runner is what follows python."""
    found = []
    for words in shell_commands(text):
        if len(words) < 3 or words[0] not in ("python", "python3"):
            continue
        if words[1:3] == ["-m", "vexpress_core"] and len(words) > 3:
            found.append((("-m", "vexpress_core"), words[3], words[4:]))
        elif words[1] == "training":
            found.append((("training",), words[2], words[3:]))
    return found


# -- the helpers themselves ----------------------------------------------------------------------

def test_link_targets_skip_code_web_links_and_anchors_and_strip_fragments():
    text = (
        "See [a](docs/a.md#part) and ![pic](images/p.png \"title\"), [web](https://example.com/x.md), "
        "[top](#top), <img src=\"workflows/t.jpg\" width=\"10\"> <a href='docs/b.md'>b</a>.\n"
        "`[not a link](code.md)`\n```\n[also not](block.md)\n```\n[[nested] text](c%20d.md)\n"
    )
    assert link_targets(text) == ["docs/a.md#part", "images/p.png", "https://example.com/x.md", "#top",
                                  "c%20d.md", "workflows/t.jpg", "docs/b.md"]
    assert [local_target(t) for t in link_targets(text)] == [
        ("docs/a.md", "part"), ("images/p.png", ""), None, None, ("c d.md", ""), ("workflows/t.jpg", ""),
        ("docs/b.md", "")]


def test_broken_links_finds_a_missing_file_and_a_link_out_of_the_repository(tmp_path):
    root = tmp_path / "repo"
    (root / "docs" / "images").mkdir(parents=True)
    (root / "docs" / "images" / "ok.png").write_bytes(b"")
    (tmp_path / "outside.md").write_text("x")
    page = root / "docs" / "page.md"
    page.write_text("![ok](images/ok.png) [gone](missing.md#x) <img src=\"images/nope.jpg\"> "
                    "[out](../../outside.md) [web](http://x/y) [here](#h)\n")
    assert broken_links(page, root) == ["missing.md#x", "../../outside.md", "images/nope.jpg"]


def test_heading_anchors_follow_github_and_broken_anchors_are_found(tmp_path):
    text = "# Full frame in, full frame out: photos\n## The insightface detector (optional)\n## `generate`\n## Notes\n## Notes\n"
    assert heading_anchors(text) == {"full-frame-in-full-frame-out-photos", "the-insightface-detector-optional",
                                     "generate", "notes", "notes-1"}
    (tmp_path / "a.md").write_text(text)
    page = tmp_path / "b.md"
    page.write_text("## Here\n[ok](a.md#generate) [bad](a.md#nothing) [self](#here) [selfbad](#there)\n")
    assert broken_anchors(page) == ["a.md#nothing", "#there"]


def test_pack_commands_are_found_in_code_blocks_only():
    text = (
        "Run `python -m vexpress_core nothing` inline (not a block).\n"
        "```bash\n"
        "pip install x && python3 -m vexpress_core demo out.mp4   # a comment\n"
        "python -m vexpress_core generate --models M \\\n    --audio a.wav --out o.mp4\n"
        "python training prepare --videos V --out D --models M\n"
        "python other.py\n"
        "```\n"
    )
    assert pack_commands(text) == [
        (("-m", "vexpress_core"), "demo", ["out.mp4"]),
        (("-m", "vexpress_core"), "generate", ["--models", "M", "--audio", "a.wav", "--out", "o.mp4"]),
        (("training",), "prepare", ["--videos", "V", "--out", "D", "--models", "M"]),
    ]


# -- the pages ------------------------------------------------------------------------------------

@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_every_local_link_and_picture_exists(page):
    assert broken_links(page, REPO) == []


def test_the_readme_links_and_pictures_are_all_seen():
    """The extraction sees the README's pictures (markdown and HTML) and its pages: a regex that
    silently found nothing would let every link test pass."""
    targets = [local_target(target) for target in link_targets(README.read_text(encoding="utf-8"))]
    paths = {target[0] for target in targets if target is not None}
    assert "docs/images/toy_talking.png" in paths
    assert {f"workflows/{workflow.stem}.jpg" for workflow in (REPO / "workflows").glob("*.json")} <= paths
    assert {"docs/cli.md", "docs/performance.md", "training/README.md"} <= paths


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_every_anchor_names_a_heading(page):
    assert broken_anchors(page) == []


DEPTH_PAGES = ("cli", "full-frame", "head-motion", "performance", "faithfulness", "extending", "install", "nodes",
               "workflows")


@pytest.mark.parametrize("name", DEPTH_PAGES)
def test_each_depth_page_exists_and_says_who_it_is_for(name):
    page = REPO / "docs" / f"{name}.md"
    assert page.is_file()
    assert f"docs/{name}.md" in README.read_text(encoding="utf-8"), "the README links every page"
    lines = [line for line in page.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert lines[0].startswith("# ")
    assert lines[1].startswith("For "), "the line after the title says who the page is for"


def test_readme_stays_a_short_users_page():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 200


README_COMMANDS = pack_commands(README.read_text(encoding="utf-8"))


def test_the_readme_quick_start_is_what_ci_runs():
    """.ci/run runs the quick start's install (quietly) and then exactly the README's test command."""
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line.startswith("python3 ")]
    quick_start = README.read_text(encoding="utf-8").split("### Command line (quick start)", 1)[1]
    block = FENCE.search(quick_start).group(0).splitlines()[1:-1]
    assert quick_start.lstrip().startswith("```"), "the two commands come first in their section"
    install, demo = block[0].split(" && ")
    assert install == ci[0].replace("pip install -q ", "pip install ", 1)
    assert demo == "python3 -m vexpress_core demo vexpress_demo.mp4"
    assert block[1:] == ci[1:] == ["python3 -m pytest -q tests"]
    assert (("-m", "vexpress_core"), "demo", ["vexpress_demo.mp4"]) in README_COMMANDS


@pytest.mark.parametrize("runner, subcommand", sorted({(runner, sub) for runner, sub, _ in README_COMMANDS}),
                         ids=lambda value: " ".join(value) if isinstance(value, tuple) else value)
def test_readme_subcommand_help_runs(runner, subcommand):
    done = subprocess.run([sys.executable, *runner, subcommand, "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout


@pytest.mark.parametrize("arguments", [[sub, *args] for runner, sub, args in README_COMMANDS
                                       if runner == ("-m", "vexpress_core")], ids=lambda a: a[0])
def test_readme_vexpress_core_commands_parse_with_every_option(arguments):
    """Each option the README writes still exists with the values it gives (parsing only, nothing runs)."""
    from vexpress_core import cli

    parsed = cli.parser().parse_args(arguments)
    assert parsed.command == arguments[0]
