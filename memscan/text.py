"""Text from data (file and class names, paths) made safe to show in a terminal, XML or Markdown."""
from __future__ import annotations

import re

# Characters that must never reach a terminal, an XML file or a Markdown table raw: C0 and C1 controls
# and DEL (terminal escape sequences, XML-forbidden), lone surrogates and U+FFFE/U+FFFF (not encodable
# or XML-forbidden), and the bidirectional embeddings, overrides and isolates (U+202A-U+202E,
# U+2066-U+2069), which make a name display as another ("Trojan Source")
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff\u202a-\u202e\u2066-\u2069]")
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(s, /, *, keep: str = "") -> str:
    """``s`` with control characters shown as Python-style escapes (ESC as the text ``\\x1b``), except those in
    ``keep``: file and class names come from data and may hold anything."""
    def esc(m):
        ch = m.group()
        if ch in keep:
            return ch
        return _SHORT.get(ch) or (f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
    return _UNPRINTABLE.sub(esc, str(s))


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")   # OWASP "CSV injection": what a spreadsheet evaluates


def spreadsheet_safe(v, /):
    """A CSV cell a spreadsheet shows instead of running: a text cell starting like a formula gets a leading
    ``'``. Only text comes from data (paths, class names); numbers stay numbers, -0.5 included."""
    return "'" + v if isinstance(v, str) and v.startswith(FORMULA_START) else v
