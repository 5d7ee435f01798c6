"""The report's table of contents, built from the rendered HTML itself.

Every `<section id="...">` whose first heading is an `<h2>` becomes an entry,
so sections added later (by qcheck or by a team's own templates) are listed
without anyone editing a list. In the PDF, CSS `target-counter()` fills in
each entry's page number; on screen the entries are links.
"""

from __future__ import annotations

import html as _html
import re

PLACEHOLDER = "<!--qcheck:toc-->"
_SECTION = re.compile(r'<section\b[^>]*\bid="([^"]+)"[^>]*>\s*<h2[^>]*>(.*?)</h2>', re.S)
_TAGS = re.compile(r"<[^>]+>")


def entries(page: str) -> list[tuple[str, str]]:
    """(id, plain heading text) of every top-level section, in document order."""
    out = []
    for anchor, heading in _SECTION.findall(page):
        text = " ".join(_html.unescape(_TAGS.sub("", heading)).split())
        out.append((anchor, text))
    return out


def fill(page: str) -> str:
    """Replace the placeholder with the list of sections (no placeholder: unchanged)."""
    if PLACEHOLDER not in page:
        return page
    items = "\n".join(f'  <li><a href="#{_html.escape(a)}">{_html.escape(t)}</a></li>' for a, t in entries(page))
    return page.replace(PLACEHOLDER, f'<ol class="toc-list">\n{items}\n</ol>', 1)
