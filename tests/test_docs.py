"""The README and the guides stay true to the tree: length, links, the Layout section and the commands they print.

Static checks only (nothing is run): a link or command that names a file the tree no longer has fails here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_README_LINES = 300


def _doc_files() -> list[Path]:
    """Every markdown file a reader reaches from the README: README.md, docs/ (reports included), benchmarks/."""
    files = [README, *sorted((ROOT / "docs").rglob("*.md"))]
    bench = ROOT / "benchmarks" / "README.md"
    if bench.exists():
        files.append(bench)
    return files


def _prose_and_code(text: str) -> tuple[str, str]:
    """Split markdown into prose lines and fenced-code lines (links and headings live in prose only)."""
    prose, code, fenced = [], [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        (code if fenced else prose).append(line)
    return "\n".join(prose), "\n".join(code)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (``-`` and ``_`` kept), spaces -> ``-``."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())  # a link in a heading anchors on its text
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    prose, _ = _prose_and_code(path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    anchors = set()
    for m in re.finditer(r"^#{1,6}\s+(.*?)\s*#*\s*$", prose, re.M):
        slug = _slug(m.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _links(path: Path) -> list[str]:
    prose, _ = _prose_and_code(path.read_text(encoding="utf-8"))
    prose = re.sub(r"`[^`\n]*`", "", prose)  # a link-like text inside an inline code span is not a link
    return _LINK.findall(prose)


def _layout_block() -> str:
    text = README.read_text(encoding="utf-8")
    m = re.search(r"^## Layout\s*\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert m, "README.md has no '## Layout' section"
    block = re.search(r"```[^\n]*\n(.*?)```", m.group(1), re.S)
    assert block, "README.md's Layout section has no code block"
    return block.group(1)


def _layout_paths() -> list[str]:
    """Paths of the Layout tree: an entry starts at column 0 (top level) or 2 (inside the last top-level folder);
    deeper-indented lines continue a description."""
    paths, parent = [], ""
    for line in _layout_block().splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        token = line.split()[0]
        if indent == 0:
            paths.append(token)
            parent = token if token.endswith("/") else ""
        elif indent == 2:
            assert parent, f"Layout line {line!r} is indented but follows no folder"
            paths.append(parent + token)
    return paths


def _tracked_files() -> list[str] | None:
    """``git ls-files`` of the checkout, or None outside a git checkout (e.g. an unpacked sdist)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        return None
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=False)
    return out.stdout.split() if out.returncode == 0 else None


# ----------------------------------------------------------------------------------------------------------------


def test_readme_is_short():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines; at most {MAX_README_LINES} (guides go to docs/)"


@pytest.mark.parametrize("doc", _doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc: Path):
    bad = []
    for target in _links(doc):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto: ...
            continue
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append(f"{target}: no heading with anchor #{anchor} in {dest.relative_to(ROOT)}")
    assert not bad, f"{doc.relative_to(ROOT)}: broken links: " + "; ".join(bad)


def test_layout_lists_only_existing_paths():
    missing = [p for p in _layout_paths() if not (ROOT / p).exists()]
    assert not missing, f"README.md's Layout lists paths that do not exist: {missing}"


def test_layout_lists_every_package_module_and_folder():
    listed = [p for p in _layout_paths() if p.startswith("partialconv/")]
    entries = sorted(
        p.name + ("/" if p.is_dir() else "")
        for p in (ROOT / "partialconv").iterdir()
        if p.name != "__pycache__" and not p.name.startswith(".") and (p.is_dir() or p.suffix == ".py")
    )
    assert entries, "partialconv/ is empty?"
    unlisted = [e for e in entries if not any(p.startswith("partialconv/" + e) for p in listed)]
    assert not unlisted, f"README.md's Layout does not list partialconv/{unlisted}"


def test_layout_lists_every_tracked_top_level_folder():
    tracked = _tracked_files()
    if tracked is None:
        pytest.skip("not a git checkout")
    folders = {f.split("/")[0] + "/" for f in tracked if "/" in f and not f.startswith(".")}
    listed = {p.split("/")[0] + "/" for p in _layout_paths() if "/" in p}
    assert folders <= listed, f"README.md's Layout does not list the top-level folders {sorted(folders - listed)}"


_MODULE_CMD = re.compile(r"(?:python3?|torchrun\b[^\n]*?)[ \t]-m[ \t]+((?:scripts|benchmarks)\.[A-Za-z_]\w*)")
_OLD_CMD = re.compile(r"\bpython3?[ \t]+((?:scripts|benchmarks)/\w+\.py)")
_SCRIPT_CMD = re.compile(r"\b(?:python3?|bash|sbatch|torchrun\b[^\n]*?)[ \t]+((?:\./)?[\w./-]+\.(?:py|sh))\b")


@pytest.mark.parametrize("doc", _doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_commands_name_existing_programs(doc: Path):
    text = doc.read_text(encoding="utf-8")
    bad = []
    for module in _MODULE_CMD.findall(text):
        # `python -m scripts.X` runs scripts/X.py from the repository root
        if not (ROOT / (module.replace(".", "/") + ".py")).is_file():
            bad.append(f"python -m {module}: no file {module.replace('.', '/')}.py")
    for script in _SCRIPT_CMD.findall(text):
        if script.startswith(("scripts/", "benchmarks/")) and script.endswith(".py"):
            continue  # reported below as the old command form
        if not (ROOT / script).is_file():
            bad.append(f"{script}: no such file")
    for old in _OLD_CMD.findall(text):
        module = old[: -len(".py")].replace("/", ".")
        bad.append(f"`python {old}`: programs under scripts/ and benchmarks/ run as `python -m {module}`")
    assert not bad, f"{doc.relative_to(ROOT)}: " + "; ".join(dict.fromkeys(bad))


def test_readme_names_the_quickstart_commands():
    text = README.read_text(encoding="utf-8")
    for cmd in ("make demo", "make test", "python train.py"):
        assert cmd in text, f"README.md does not show `{cmd}`"
    targets = re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(encoding="utf-8"), re.M)
    assert {"demo", "test"} <= set(targets), f"Makefile targets: {targets}"


def test_citation_file_names_both_papers():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    assert cff["cff-version"] == "1.2.0"
    for key in ("message", "title", "authors"):  # required by the CFF 1.2.0 schema
        assert cff.get(key), f"CITATION.cff: no {key}"
    refs = [cff["preferred-citation"], *cff["references"]]
    titles = {r["title"] for r in refs}
    assert titles == {
        "Image Inpainting for Irregular Holes Using Partial Convolutions",
        "Partial Convolution based Padding",
    }
    for r in refs:
        assert r["authors"][0] == {"family-names": "Liu", "given-names": "Guilin"}, r["title"]
        assert r["year"] == 2018
    license_text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    setup_license = re.search(r"^license\s*=\s*(\S+)", (ROOT / "setup.cfg").read_text(encoding="utf-8"), re.M)
    assert setup_license and setup_license.group(1) == cff["license"] == "BSD-3-Clause"
    assert license_text.startswith("BSD 3-Clause License")


def test_setup_and_test_times_state_the_machine_and_its_load():
    """A wall time measured on an idle machine read as a promise on a busy one: each time the README and
    docs/testing.md give for the demo and the suite says on which machine and at which load average."""
    readme = " ".join(README.read_text(encoding="utf-8").split())
    demo = readme[readme.index("**The demo**") :].split(" - ")[0]
    assert len(re.findall(r"load average [~\d]", demo)) >= 2, demo  # the idle figure and a loaded one
    testing = (ROOT / "docs" / "testing.md").read_text(encoding="utf-8")
    timed = [p for p in testing.split("\n\n") if re.search(r"\b\d+ (?:min|minutes)\b", p)]
    assert timed and all("idle" in p and "load average" in p for p in timed), timed
