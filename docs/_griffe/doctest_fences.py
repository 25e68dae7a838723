"""A griffe extension used by the documentation build (see mkdocs.yml).

The docstrings of keras_balance end with doctests under an `Example:` line,
written at the docstring's own indentation. Griffe's Google-style parser only
turns doctests into code inside an indented `Examples:` section, so these
lines would be rendered as Markdown text (where an output such as
`[0.5, 0.5]` after `[...]` even reads as a link). This extension wraps every
run of doctest lines (from a `>>>` line to the next blank line) in a
```pycon fence before the docstring is parsed, wherever it appears.
"""

import griffe

_FENCE = "```"


def fence_doctests(text):
    """Return `text` with each doctest run wrapped in a ```pycon block."""
    out = []
    in_fence = False
    in_doctest = False
    indent = ""
    for line in text.split("\n"):
        stripped = line.strip()
        if in_doctest:
            if stripped:
                out.append(line)
                continue
            out.append(f"{indent}{_FENCE}")
            in_doctest = False
        elif stripped.startswith(_FENCE):
            in_fence = not in_fence
        elif not in_fence and stripped.startswith(">>>"):
            indent = line[: len(line) - len(line.lstrip())]
            out.append(f"{indent}{_FENCE}pycon")
            in_doctest = True
        out.append(line)
    if in_doctest:
        out.append(f"{indent}{_FENCE}")
    return "\n".join(out)


class DoctestFences(griffe.Extension):
    """Wrap the doctests of every docstring in code fences."""

    def on_instance(self, *, node, obj, agent, **kwargs):
        docstring = obj.docstring
        if docstring is not None and ">>>" in docstring.value:
            docstring.value = fence_doctests(docstring.value)
