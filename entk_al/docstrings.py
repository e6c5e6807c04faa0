"""Read the ``Args:`` section of a Google-style docstring (for ``entk-al strategies NAME``).

Example:
    >>> args_section('''Do it.
    ...
    ... Args:
    ...     ridge: ridge relative to the kernel scale. More text.
    ...         Continued here.
    ...     mode: ``batch`` | ``sequential``.
    ... ''')
    {'ridge': 'ridge relative to the kernel scale. More text. Continued here.', 'mode': '``batch`` | ``sequential``.'}
"""

from __future__ import annotations

import inspect
import re

_SECTION = re.compile(r"^(Args|Arguments|Parameters|Attributes|Returns|Raises|Yields|Example|Examples|Note|Notes"
                      r"|Source|References?):\s*$")
_ITEM = re.compile(r"^(\*{0,2}\w+)(\s*\([^)]*\))?:\s*(.*)$")


def args_section(doc: str | None, section: str = "Args") -> dict[str, str]:
    """Parameter name -> its description (continuation lines joined) from ``section`` of ``doc``.

    Args:
        doc: a docstring (indentation is cleaned as :func:`inspect.cleandoc` does), or None.
        section: the section header to read: ``Args`` (default) or ``Attributes``.

    Returns:
        an ordered dict; empty when the section is missing.
    """
    lines = inspect.cleandoc(doc or "").splitlines()
    out: dict[str, str] = {}
    inside, item_indent, name = False, None, None
    for line in lines:
        stripped = line.strip()
        header = _SECTION.match(stripped)
        if header and len(line) - len(line.lstrip()) == 0:
            inside, item_indent, name = header.group(1) == section, None, None
            continue
        if not inside or not stripped:
            continue
        indent = len(line) - len(line.lstrip())
        if indent == 0:  # dedented prose ends the section
            inside = False
            continue
        if item_indent is None:
            item_indent = indent
        match = _ITEM.match(stripped) if indent == item_indent else None
        if match:
            name = match.group(1).lstrip("*")
            out[name] = match.group(3).strip()
        elif name is not None:
            out[name] = f"{out[name]} {stripped}".strip()
    return out


def first_sentence(text: str) -> str:
    """``text`` up to the end of its first sentence, with reST ``literal`` markup dropped."""
    text = " ".join(text.replace("``", "").split())
    # A sentence ends at a period followed by a capital letter or the end; abbreviations such as
    # "Eq. 13", "et al. 2020" or "e.g. X" do not end it.
    match = re.search(r"(?<!\be\.g)(?<!\bi\.e)(?<!\bEq)(?<!\bal)(?<!\bcf)(?<!\bvs)\.(?=\s+[A-Z]|$)", text)
    return text[:match.start() + 1] if match else text
