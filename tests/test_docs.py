"""The docs that ship with the code stay true: the CLI reference is the parser's, the published numbers are
the module's, and README links the project's own docs (a clone has no ../shared)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from masklab.published import CIFAR10, DENSE, HIGH_SPARSITY

REPO = Path(__file__).resolve().parents[1]


def test_the_cli_reference_is_generated_from_the_parser():
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "cli_reference.py"), "--check"],
                            capture_output=True, text=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr


def test_the_published_numbers_page_agrees_with_the_module():
    page = (REPO / "docs" / "published.md").read_text()
    rows = {}
    model = None
    for line in page.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 8 and cells[1] in ("edge-popup", "biprop", "edge-popup+iterand", "edge-popup+iwr",
                                            "biprop+iwr"):
            if cells[0]:
                model = cells[0].split()[0]
                assert f"(dense {DENSE[model]:g})" in cells[0]
            rows[(model, cells[1])] = tuple(float(c) for c in cells[2:])
    assert rows == {(m, method): tuple(float(a) for a in accs) for m, methods in CIFAR10.items()
                    for method, accs in methods.items()}
    for (m, sparsity), methods in HIGH_SPARSITY.items():
        for method, acc in methods.items():
            assert f"| {m} | {sparsity:g} | {method} | {acc:g} |" in page


def test_readme_links_the_projects_own_docs_and_they_exist():
    readme = (REPO / "README.md").read_text()
    assert "../shared" not in readme
    links = re.findall(r"\]\((docs/[^)#]+)", readme)
    assert {"docs/design.md", "docs/run-directory.md", "docs/algorithms.md", "docs/cli.md",
            "docs/published.md"} <= set(links)
    for link in links:
        assert (REPO / link).is_file(), link
