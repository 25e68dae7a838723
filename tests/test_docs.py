"""The documentation: the site builds without warnings, and the README and the
navigation list exactly the registered balancers."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

from keras_balance import balancers

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MKDOCS_YML = ROOT / "mkdocs.yml"
DOCS = ROOT / "docs"

SITE_URL = "https://keras-balance.github.io/keras_balance/"
NOTEBOOKS = ("helmholtz", "kirchhoff", "multitask", "custom_pde", "multitask_benchmark", "time_dependent")
COLAB_URL = "https://colab.research.google.com/github/keras-balance/keras_balance/blob/main/colab/{}.ipynb"

# The words the README and the navigation use for `Balancer.kind`.
KIND_WORDS = {"loss-level": balancers.LOSS_LEVEL, "gradient-level": balancers.GRADIENT_LEVEL}
NAV_GROUPS = {"Loss-level": balancers.LOSS_LEVEL, "Gradient-level": balancers.GRADIENT_LEVEL}


def registered_kinds():
    """{name: kind} of every registered balancer."""
    return {name: cls.kind for name, cls in balancers.available().items()}


def assert_lists_the_registry(listed, what):
    """`listed` names every registered balancer once and nothing else; `what` completes the message."""
    expected, listed = set(balancers.available()), list(listed)
    assert sorted(listed) == sorted(expected), (
        f"{what}; missing {sorted(expected - set(listed))}, extra {sorted(set(listed) - expected)}."
    )


def table_cells(line):
    """The cells of a Markdown table row; `\\|` is a pipe inside a cell."""
    cells = re.split(r"(?<!\\)\|", line.strip())
    return [cell.strip() for cell in cells[1:-1]]


def markdown_section(text, title):
    """The text of the `## title` section of a Markdown document."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match, f"README.md has no '## {title}' section."
    return match.group(1)


def readme_methods():
    """{name: kind word} from the table of the README's Methods section."""
    section = markdown_section(README.read_text(encoding="utf-8"), "Methods")
    rows = [line for line in section.splitlines() if line.startswith("|")]
    header = table_cells(rows[0])
    name_col, kind_col = header.index("name"), header.index("kind")
    methods = {}
    for row in rows[2:]:  # after the header and the separator
        cells = table_cells(row)
        assert len(cells) == len(header), f"Malformed row in the README's method table: {row}"
        name = cells[name_col].strip("`")
        assert name not in methods, f"{name} appears twice in the README's method table."
        methods[name] = cells[kind_col]
    return methods


def nav_methods():
    """{page stem: (kind group title, page path)} of the Methods section of the nav."""
    yaml = pytest.importorskip("yaml", reason="PyYAML (a dependency of mkdocs) reads mkdocs.yml")
    config = yaml.safe_load(MKDOCS_YML.read_text(encoding="utf-8"))
    sections = {title: body for item in config["nav"] for title, body in item.items()}
    assert "Methods" in sections, "mkdocs.yml has no 'Methods' section in its nav."
    pages = {}
    for item in sections["Methods"]:
        ((title, body),) = item.items()
        if isinstance(body, str):  # the overview page
            continue
        for entry in body:
            ((_, path),) = entry.items()
            stem = pathlib.PurePosixPath(path).stem
            assert stem not in pages, f"{path} appears twice in the nav."
            pages[stem] = (title, path)
    return pages


def test_docs_build_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (it is in the `test` extra)")
    site = tmp_path / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    # mkdocstrings rendered the API from the docstrings.
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    for identifier in ("keras_balance.BalancedModel", "keras_balance.PINNModel",
                       "keras_balance.balancers.GradientBalancer", "keras_balance.bench.train"):
        assert f'id="{identifier}"' in api, f"{identifier} is missing from the API page."
    relobralo = (site / "methods" / "relobralo" / "index.html").read_text(encoding="utf-8")
    assert 'id="keras_balance.balancers.ReLoBRaLo"' in relobralo
    # Formulas are kept for MathJax, which the page loads.
    assert 'class="arithmatex"' in relobralo
    assert "mathjax" in relobralo.lower()


def test_readme_method_table_matches_registry():
    expected = registered_kinds()
    listed = readme_methods()
    assert_lists_the_registry(listed, "The README's method table must list exactly the registered balancers")
    for name, word in listed.items():
        assert word in KIND_WORDS, f"Unknown kind {word!r} for {name} in the README (use {sorted(KIND_WORDS)})."
        assert KIND_WORDS[word] == expected[name], f"The README gives {name} the kind {word!r}."


def test_nav_method_pages_match_registry():
    expected = registered_kinds()
    pages = nav_methods()
    assert_lists_the_registry(
        pages, "The Methods section of the nav must have one page per registered balancer, named after it"
    )
    for name, (group, path) in pages.items():
        assert NAV_GROUPS.get(group) == expected[name], f"{path} is listed under {group!r}."
        text = (DOCS / path).read_text(encoding="utf-8")
        cls = balancers.available()[name]
        assert f"::: keras_balance.balancers.{cls.__name__}\n" in text, (
            f"{path} must generate the API of {cls.__name__} with a `::: keras_balance.balancers."
            f"{cls.__name__}` block."
        )


def test_methods_overview_lists_every_balancer():
    text = (DOCS / "methods" / "index.md").read_text(encoding="utf-8")
    listed = [table_cells(line)[0].strip("`") for line in text.splitlines() if line.startswith("| `")]
    assert_lists_the_registry(listed, "docs/methods/index.md must list exactly the registered balancers")


def test_readme_links_to_the_docs_and_the_notebooks():
    text = README.read_text(encoding="utf-8")
    assert SITE_URL in text
    assert "](docs/)" in text
    assert f"site_url: {SITE_URL}" in MKDOCS_YML.read_text(encoding="utf-8")
    for notebook in NOTEBOOKS:
        assert (ROOT / "colab" / f"{notebook}.ipynb").is_file(), f"colab/{notebook}.ipynb is missing."
        assert f"](colab/{notebook}.ipynb)" in text, f"README.md does not link colab/{notebook}.ipynb."
        assert COLAB_URL.format(notebook) in text, f"README.md has no Colab badge for {notebook}."


def test_readme_relative_links_exist():
    text = README.read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if not re.match(r"[a-z]+:", t)]
    assert local, "README.md has no relative links."
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, f"README.md links to missing files: {missing}"


def test_readme_keeps_the_ci_test_command():
    command = 'pip install ".[test]" && pytest'
    assert command in markdown_section(README.read_text(encoding="utf-8"), "Two commands")
    assert command in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
