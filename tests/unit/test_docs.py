"""The documents stay true to the code: every command and every option ``--help`` shows
is in docs/operations.md, under its command's section; every document the code names
exists in the repository; and the layering the architecture promises holds."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from natlens.cli import cli

ROOT = Path(__file__).resolve().parent.parent.parent
OPS = (ROOT / "docs" / "operations.md").read_text()


def commands(group: click.Group = cli, path: tuple[str, ...] = ()) -> Iterator[
        tuple[tuple[str, ...], click.Command]]:
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            yield from commands(cmd, (*path, name))
        else:
            yield (*path, name), cmd


def section(path: tuple[str, ...]) -> str:
    """The part of operations.md under ``## natlens TOP`` (``lab run`` and ``demo`` are
    under ``## natlens lab``)."""
    top = "lab" if path[0] == "demo" else path[0]
    parts = re.split(r"^## ", OPS, flags=re.M)
    found = [p for p in parts if p.startswith(f"natlens {top}")]
    assert found, f"docs/operations.md has no section '## natlens {top}'"
    return "\n".join(found)


ALL = list(commands(cli.load_all()))


@pytest.mark.parametrize("path,cmd", ALL, ids=[" ".join(p) for p, _ in ALL])
def test_every_command_and_option_is_documented(path: tuple[str, ...],
                                                cmd: click.Command) -> None:
    text = section(path)
    assert f"natlens {' '.join(path)}" in text, f"natlens {' '.join(path)} is not documented"
    r = CliRunner().invoke(cli, [*path, "--help"])
    assert r.exit_code == 0, r.output
    missing = [max(p.opts, key=len) for p in cmd.params
               if isinstance(p, click.Option) and not p.hidden
               and not any(re.search(rf"(?<![\w-]){re.escape(o)}\b", text) for o in p.opts)]
    assert not missing, f"natlens {' '.join(path)}: {missing} not in docs/operations.md"


def test_documents_named_in_the_tree_exist() -> None:
    named = set()
    for f in [*ROOT.glob("*.md"), *ROOT.glob("docs/*.md"), *ROOT.glob("deploy/*"),
              *(p for d in ("agent", "collector", "natlens", "lab", "proto", "bench", "tests")
                for p in (ROOT / d).rglob("*.py"))]:
        text = f.read_text()
        outside = ("DESIGN" + ".md", "../" + "shared")  # documents outside the repository
        assert not any(o in text for o in outside), f
        named |= set(re.findall(r"\b(?:docs/[\w.-]+\.md|[A-Z]+\.md)\b", text))
    for doc in named:
        assert (ROOT / doc).is_file(), f"{doc} is named but not in the repository"


def functions(root: Path) -> Iterator[tuple[Path, str, int]]:
    for f in root.rglob("*.py"):
        for n in ast.walk(ast.parse(f.read_text())):
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef):
                yield f, n.name, (n.end_lineno or n.lineno) - n.lineno + 1


def test_no_function_is_longer_than_80_lines() -> None:
    long = [f"{f.relative_to(ROOT)}:{name} ({n} lines)"
            for d in ("agent", "collector", "natlens", "lab")
            for f, name, n in functions(ROOT / d) if n > 80]
    assert not long


def test_queries_and_analysis_do_not_reach_up_into_the_report() -> None:
    for d in ("query", "analyze", "store"):
        for f in (ROOT / "collector" / d).rglob("*.py"):
            text = f.read_text()
            assert "collector.report" not in text, f
            assert "rfc3339" not in text, f  # times are formatted in report/ and above


def test_nothing_but_the_store_speaks_sql() -> None:
    sql = re.compile(r"\b(SELECT|INSERT|DELETE|UPDATE)\b .*\b(FROM|INTO|SET)\b")
    for d in ("agent", "natlens", "lab", "collector"):
        for f in (ROOT / d).rglob("*.py"):
            if "store" in f.relative_to(ROOT).parts:
                continue
            assert not sql.search(f.read_text()), f"SQL outside collector/store/: {f}"


def test_files_the_documents_name_exist() -> None:
    """README, BENCHMARKS and docs/ (but the benchmark log, which tells history) name
    only files that are in the tree."""
    pattern = re.compile(r"\b(?:agent|collector|natlens|lab|proto|bench|tests|deploy|scripts|"
                         r"examples)/[\w/.-]+\.(?:py|c|html|proto|yaml|sh)\b")
    docs = [ROOT / "README.md", ROOT / "BENCHMARKS.md",
            *(p for p in (ROOT / "docs").glob("*.md") if p.name != "benchmark-log.md")]
    missing = {(d.name, f) for d in docs for f in pattern.findall(d.read_text())
               if not (ROOT / f).exists()}
    assert not missing
