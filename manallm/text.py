"""What a name or a piece of text may hold, and how a bad value is quoted back.

One rule for every name that reaches headers, log lines, metric labels or breaker keys
(a request's ``model``, alias names and chain entries, consumer scopes, price targets),
and one way to echo a rejected value in a message. Here, at the bottom, so the routing
and consumers validators share it without importing each other.
"""
import re

# Free text keeps tabs and line breaks; other C0 controls, DEL, C1 and lone surrogates
# (which cannot be encoded for the database or a UTF-8 answer) are refused.
_UNFIT_IN_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def unprintable(text: str, *, free_text: bool = False) -> str | None:
    """The first character of ``text`` that must not be stored or echoed, as ``U+XXXX``;
    None when there is none.

    A name must be printable: no control character (C0 incl. NUL, TAB, CR/LF, ESC; DEL;
    C1), no lone surrogate, no format or separator character other than the space.
    ``free_text`` (a description) may also hold tabs, line breaks and any other Unicode
    character. A printable name costs one ``str.isprintable`` call.
    """
    if free_text:
        match = _UNFIT_IN_TEXT.search(text)
        bad = match.group() if match else None
    else:
        bad = None if text.isprintable() else next(char for char in text if not char.isprintable())
    return None if bad is None else f"U+{ord(bad):04X}"


def shown(value: object, limit: int = 80) -> str:
    """``value`` quoted for a message: repr escapes what is unprintable, and a long value
    is cut, so an error never echoes a control character or a megabyte back."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
