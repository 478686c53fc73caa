"""The model card: fields the user gives (intended use, limitations, owners, data), shown at the top of a report.

``build_report(..., card={...})`` (and ``keras-hybrid-interp analyze --card
card.yaml``) take a mapping of field name to text. The known fields,
:data:`CARD_FIELDS`, come first in that order, under their labels
(:data:`CARD_LABELS`); any other field follows, in the order given, under its
own name. Only ``owners`` may be a list of names. The values are kept exactly
as given: the HTML escapes them, the PDF prints them, and the record stores
them under ``card`` (``docs/definitions/report.md``, *The model card*).
"""

from __future__ import annotations

import html
from collections.abc import Mapping

__all__ = ["CARD_FIELDS", "CARD_LABELS", "CARD_CSS", "check_card", "card_rows", "card_html"]

#: The known fields of a model card, in the order the report shows them.
CARD_FIELDS = ("intended_use", "limitations", "owners", "data")
#: How the report labels the known fields (other fields are shown under their own names).
CARD_LABELS = {"intended_use": "Intended use", "limitations": "Limitations", "owners": "Owners",
               "data": "Data"}
#: The one field that may be a list of strings (several owners).
LIST_FIELDS = ("owners",)
#: The HTML report's style of the card (a two-column definition list; long values wrap, newlines kept).
CARD_CSS = ("dl.card{display:grid;grid-template-columns:max-content 1fr;gap:0.2em 1em;margin:0.3em 0 1em}"
            "dl.card dt{font-weight:bold}dl.card dd{margin:0;white-space:pre-wrap;overflow-wrap:anywhere}")


def _expected(argname) -> str:
    return (f"`{argname}` must be a mapping of field name (a non-empty str) to text (a str; `owners` may also be "
            f"a list of str); the known fields are {list(CARD_FIELDS)}, any other field is shown under its name")


def check_card(card, argname: str = "card") -> dict:
    """The card as the report keeps it: a new dict, the known fields first (:data:`CARD_FIELDS`), then the others.

    ``None`` gives ``{}``. Values are kept exactly as given (a tuple of owners
    becomes a list). Anything else is refused before any data is read: a
    TypeError for a card that is not a mapping, a key that is not a str or a
    value that is not a str (nor, for ``owners``, a list of str); a ValueError
    for an empty (or blank) key. The message names ``argname``, what was
    expected and what was received.
    """
    if card is None:
        return {}
    if not isinstance(card, Mapping):
        raise TypeError(f"{_expected(argname)}; received {type(card).__name__}: {card!r:.80}.")
    known: dict[str, str | list[str]] = {}
    other: dict[str, str | list[str]] = {}
    for key, value in card.items():
        if not isinstance(key, str):
            raise TypeError(f"{_expected(argname)}; received a key of type {type(key).__name__}: {key!r:.80}.")
        if not key.strip():
            raise ValueError(f"{_expected(argname)}; received an empty key {key!r}.")
        if isinstance(value, (list, tuple)) and key in LIST_FIELDS:
            bad = [v for v in value if not isinstance(v, str)]
            if bad:
                raise TypeError(f"{_expected(argname)}; received `{argname}[{key!r}]` holding "
                                f"{type(bad[0]).__name__} {bad[0]!r:.80}.")
            value = list(value)
        elif not isinstance(value, str):
            hint = " (only `owners` may be a list)" if isinstance(value, (list, tuple)) else ""
            raise TypeError(f"{_expected(argname)}; received `{argname}[{key!r}]` of type {type(value).__name__}: "
                            f"{value!r:.80}{hint}.")
        (known if key in CARD_FIELDS else other)[key] = value
    return {**{k: known[k] for k in CARD_FIELDS if k in known}, **other}


def card_rows(card) -> list[tuple[str, str]]:
    """``(label, text)`` per field, in the card's order; a list of owners is joined with ", "."""
    return [(CARD_LABELS.get(key, key), ", ".join(value) if isinstance(value, list) else value)
            for key, value in card.items()]


def card_html(card) -> str:
    """The card as HTML (a definition list under the title, every user string escaped); "" for an empty card."""
    if not card:
        return ""
    esc = html.escape
    items = "".join(f"<dt>{esc(label)}</dt><dd>{esc(text)}</dd>" for label, text in card_rows(card))
    return (f"<section id='card' class='card' aria-label='Model card'><p><b>Model card</b> (given by the report's "
            f"author)</p><dl class='card'>{items}</dl></section>")
