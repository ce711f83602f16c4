"""Values that look like personal data, counted per column: e-mail addresses, phone
numbers in international form, card numbers of a known issuer whose Luhn digit is right
and IBANs whose mod-97 is right. Counts only, never values.

Cheap by construction: at most ``sample_rows`` rows are read, the patterns run as
vectorised RE2 matches in Arrow, and the checksums only on the (few) values a pattern
matched, at most ``MAX_CHECKSUMS`` per column.
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc

SAMPLE_ROWS = 10_000
MAX_CHECKSUMS = 1_000
EMAIL = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
# E.164 as people write it: a plus, 8 to 15 digits, spaces, dots, dashes or brackets.
PHONE = r"^\+[0-9](?:[ ().-]?[0-9]){7,14}$"
CARD = r"^[0-9](?:[ -]?[0-9]){13,18}$"
# The issuer prefixes and lengths of the cards in use (Visa, Mastercard, American
# Express, Diners, Discover, JCB, UnionPay): a 13-digit id starting with 4 is no card.
CARD_ISSUERS = (
    r"^(?:4[0-9]{15}(?:[0-9]{3})?|5[1-5][0-9]{14}"
    r"|2(?:22[1-9]|2[3-9][0-9]|[3-6][0-9]{2}|7[01][0-9]|720)[0-9]{12}"
    r"|3[47][0-9]{13}|3(?:0[0-5]|[689][0-9])[0-9]{11,13}"
    r"|6(?:011|5[0-9]{2}|4[4-9][0-9])[0-9]{12,15}|35[0-9]{14,17}|62[0-9]{14,17})$"
)
IBAN = r"^[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}$"


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, char in enumerate(reversed(digits)):
        n = int(char) * (2 if i % 2 else 1)
        total += n - 9 if n > 9 else n
    return total % 10 == 0


def iban_valid(text: str) -> bool:
    """ISO 13616: the country and check digits moved to the end, letters as 10..35,
    the number mod 97 is 1."""
    compact = text.replace(" ", "")
    moved = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def _checked(values: pa.Array, valid) -> int:
    candidates = values.drop_null().to_pylist()[:MAX_CHECKSUMS]
    return sum(1 for v in candidates if valid(v))


def _count(column: pa.Array) -> int:
    """Values of ``column`` (strings) that look like personal data."""
    looks = pc.or_(pc.match_substring_regex(column, EMAIL), pc.match_substring_regex(column, PHONE))
    hits = pc.sum(pc.cast(looks, pa.int64())).as_py() or 0
    rest = pc.filter(column, pc.invert(pc.fill_null(looks, False)))
    cards = pc.filter(rest, pc.fill_null(pc.match_substring_regex(rest, CARD), False))
    if len(cards):
        digits = pc.replace_substring_regex(cards, r"[ -]", "")
        issued = pc.filter(digits, pc.match_substring_regex(digits, CARD_ISSUERS))
        hits += _checked(issued, luhn_valid)
    upper = pc.utf8_upper(rest)
    ibans = pc.filter(upper, pc.fill_null(pc.match_substring_regex(upper, IBAN), False))
    if len(ibans):
        hits += _checked(ibans, iban_valid)
    return hits


def personal_data_counts(
    tables: Iterable[pa.Table], skip: Iterable[str] = (), sample_rows: int = SAMPLE_ROWS
) -> dict[str, int]:
    """Per text column not in ``skip``: how many of the first ``sample_rows`` values
    look like personal data (only the columns with any)."""
    skipped, counts, seen = set(skip), {}, 0
    for table in tables:
        table = table.slice(0, sample_rows - seen)
        seen += table.num_rows
        for name in table.column_names:
            column = table[name]
            kind = column.type
            if pa.types.is_dictionary(kind):
                column, kind = column.cast(kind.value_type), kind.value_type
            if name in skipped or not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
                continue
            hits = _count(column.combine_chunks())
            if hits:
                counts[name] = counts.get(name, 0) + hits
        if seen >= sample_rows:
            break
    return counts
