"""Decoding the recogniser's CTC output and laying out words: the general repairs for scans.

These tests build the model's per-column output by hand (best class, its probability, the space class's
probability), so they are fast and need no model.  Columns are the recogniser's output steps; ordinary
text advances about three columns per character.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from invoiceflow.extraction import ocr
from invoiceflow.extraction.textlayer import Line, Word

CHARSET = [
    "blank",
    *sorted(set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZäöüß0123456789.,:-%·")),
    " ",
]
SPACE = len(CHARSET) - 1


def _read(spec: list[tuple[str, float, float]]) -> Any:
    """A recogniser read from (character or "" for blank, probability, space-class probability) columns."""
    best = np.array([CHARSET.index(ch) if ch else 0 for ch, _p, _s in spec])
    prob = np.array([p for _c, p, _s in spec], dtype=np.float32)
    space = np.array([s for _c, _p, s in spec], dtype=np.float32)
    return ocr._Read(best, prob, space)


def _columns(
    text: str, *, gap: int = 1, gap_space: float = 0.0, probs: dict[int, float] | None = None
) -> Any:
    """Each character followed by two blank columns; "|" marks a word gap of ``gap`` extra blanks whose
    space probability is ``gap_space`` (no space character is emitted there)."""
    spec: list[tuple[str, float, float]] = [("", 1.0, 0.0)]
    index = 0
    for ch in text:
        if ch == "|":
            spec.extend([("", 1.0, gap_space)] * gap)
            continue
        if ch == " ":
            spec.append((" ", 1.0, 1.0))
        else:
            spec.append((ch, (probs or {}).get(index, 1.0), 0.0))
            index += 1
        spec.extend([("", 1.0, 0.0)] * 2)
    return _read(spec)


def _decode(read: Any) -> str:
    return ocr._decode(read, CHARSET, SPACE)[0]


def test_plain_text_and_real_spaces_are_kept() -> None:
    assert _decode(_columns("Rechnung Nr. 4711")) == "Rechnung Nr. 4711"


@pytest.mark.parametrize(
    ("glued", "space_probability", "expected"),
    [
        ("Baurechnung|Nr.", 0.3, "Baurechnung Nr."),  # the space class is the clear runner-up
        ("Baurechnung|Nr.", 0.03, "Baurechnung Nr."),
        ("42389|vom", 0.05, "42389 vom"),
        ("Baurechnung|Nr.", 0.001, "BaurechnungNr."),  # nothing says space: the model's reading stands
    ],
)
def test_dropped_space_is_restored_from_the_space_class(
    glued: str, space_probability: float, expected: str
) -> None:
    assert _decode(_columns(glued, gap=1, gap_space=space_probability)) == expected


def test_a_blank_run_much_wider_than_a_character_step_is_a_space() -> None:
    # characters 3 columns apart; the gap between the words is 3 + 5 = 8 columns, with no space signal
    assert _decode(_columns("ELEKTRON|Industrieservice|GmbH", gap=5)) == "ELEKTRON Industrieservice GmbH"
    # a faint space signal in a moderately wide run counts too
    assert _decode(_columns("Lieferantenstraße|20", gap=2, gap_space=0.01)) == "Lieferantenstraße 20"
    # an ordinary step is never a space, and a slightly wide one without any signal is not either
    assert _decode(_columns("Lieferantenstraße|20", gap=2, gap_space=0.0)) == "Lieferantenstraße20"


def test_no_space_is_put_inside_a_number() -> None:
    assert _decode(_columns("518,|99", gap=5, gap_space=0.5)) == "518,99"
    assert _decode(_columns("1.234,|56 EUR", gap=1, gap_space=0.2)) == "1.234,56 EUR"


def test_middle_dot_between_words_is_a_space() -> None:
    assert _decode(_columns("Zitronensäure·100ml")) == "Zitronensäure 100ml"


@pytest.mark.parametrize(
    ("text", "probs", "expected"),
    [
        ("Zahlbar sofort .rein netto", {}, "Zahlbar sofort rein netto"),  # a dot stuck to a word's front
        ("4123456000021 . GZ250", {}, "4123456000021 GZ250"),  # a lone dot
        ("2.60,00", {1: 0.54}, "260,00"),  # an unsure dot ahead of the real decimal comma
        ("1.260,00", {}, "1.260,00"),  # a sure thousands separator stays
        ("Basis: .60,00", {6: 0.39}, "Basis: 60,00"),
        ("Gesamtbetrag der. Abschläge", {15: 0.42}, "Gesamtbetrag der Abschläge"),  # unsure dot after a word
        ("Rechnung Nr. 4711", {}, "Rechnung Nr. 4711"),  # a sure one stays
        ("Musterstraße.12", {12: 0.49}, "Musterstraße 12"),  # an unsure dot in the gap before a number
        ("Version 3.0", {8: 0.5}, "Version 3.0"),  # between digits it may be the decimal point: kept
        ("Datum.2024-08-14", {}, "Datum. 2024-08-14"),  # a sure dot: the word's, and the space was lost
        ("Rechnung Nr.4711", {}, "Rechnung Nr. 4711"),
    ],
)
def test_specks_read_as_dots_are_dropped(text: str, probs: dict[int, float], expected: str) -> None:
    assert _decode(_columns(text, probs=probs)) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("zUGFeRD-Version", "ZUGFeRD-Version"),
        ("uSt.-Id.-Nr.", "USt.-Id.-Nr."),
        ("zitronensäure", "zitronensäure"),  # nothing tells the case: left alone
        ("Cl-2024-3886", "CI-2024-3886"),  # a code of capitals and digits has no lower-case l
        ("1,0l", "1,0l"),  # a litre is lower case
        ("Cl Kunde", "Cl Kunde"),  # not a code (no digits)
    ],
)
def test_case_confusions(text: str, expected: str) -> None:
    assert _decode(_columns(text)) == expected


def test_decode_reports_character_columns_and_mean_probability() -> None:
    text, score, chars = ocr._decode(_columns("ab", probs={0: 0.5}), CHARSET, SPACE)
    assert text == "ab" and score == pytest.approx(0.75)
    assert [c for c, _ in chars] == ["a", "b"] and chars[0][1] < chars[1][1]


# ---------------------------------------------------------------- word boxes


def _line_from_read(read: Any, width: float) -> Line:
    """Words of one recognised crop laid out like ``ocr_image`` does (crop pixels = points here)."""
    _text, _score, chars = ocr._decode(read, CHARSET, SPACE)
    words = [Word(t, a, b, 0.0, 10.0) for t, a, b in ocr._word_spans(chars, len(read.best), width)]
    return Line(words)


def test_words_of_one_phrase_stay_one_segment() -> None:
    """CTC columns are coarse: ordinary spaces must not open gaps wide enough to split a phrase."""
    read = _columns("Lieferant GmbH Musterstraße 12")
    line = _line_from_read(read, width=len(read.best) * 2.0)  # 6 px per character, 10 px high
    assert [w.text for w in line.words] == ["Lieferant", "GmbH", "Musterstraße", "12"]
    assert [s.text for s in line.segments] == ["Lieferant GmbH Musterstraße 12"]


def test_column_titles_sharing_one_box_stay_separate_cells() -> None:
    """A wide gutter inside one detector box keeps its width: "MwSt-Betrag" and "MwSt-%" are two cells."""
    read = _columns("MwSt-Betrag|MwSt-%", gap=20)
    line = _line_from_read(read, width=len(read.best) * 2.0)
    assert [s.text for s in line.segments] == ["MwSt-Betrag", "MwSt-%"]
    first, second = line.words
    assert second.x0 - first.x1 > 30  # the gap is about the blank run, not shared out over the letters


def test_word_spans_stay_inside_the_crop() -> None:
    read = _columns("A B")
    spans = ocr._word_spans(ocr._decode(read, CHARSET, SPACE)[2], len(read.best), 40.0)
    assert [t for t, _a, _b in spans] == ["A", "B"]
    assert all(0.0 <= a < b <= 40.0 for _t, a, b in spans)


# ---------------------------------------------------------------- batching and vertical text


def test_recogniser_batches_never_pad_a_narrow_crop_to_a_wide_one() -> None:
    widths = [1.0, 12.0, 1.02, 5.0, 1.01, 5.1, 30.0, 1.03, 1.0, 1.0, 1.0, 1.0, 1.0]
    batches = ocr._rec_batches(widths)
    assert sorted(i for b in batches for i in b) == list(range(len(widths)))
    for batch in batches:
        assert len(batch) <= ocr._REC_BATCH
        padded = max(widths[i] for i in batch) * len(batch)
        assert padded <= 1.05 * sum(widths[i] for i in batch) + 1e-9
    assert any(len(b) == ocr._REC_BATCH for b in batches)  # equal widths still share a batch
    assert [6] in batches and [1] in batches  # the long lines go alone


def _box(x0: float, y0: float, x1: float, y1: float) -> list[tuple[float, float]]:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def test_vertical_margin_text_is_recognised_as_such() -> None:
    lines = [_box(100, 100 + 40 * i, 900, 136 + 40 * i) for i in range(12)]
    digit = _box(1000, 100, 1020, 136)  # a one-character cell is taller than wide, but line-high
    margin = _box(20, 100, 56, 600)  # rotated text down the margin
    boxes = np.asarray([*lines, digit, margin], dtype=np.float32)
    assert ocr._vertical(boxes).tolist() == [False] * 13 + [True]


def test_ocr_images_keeps_page_order_and_survives_a_failing_page(monkeypatch: pytest.MonkeyPatch) -> None:
    from invoiceflow.extraction.textlayer import PageText

    def fake(image: Any, page_number: int = 1) -> PageText:
        if image == "bad":
            raise RuntimeError("onnxruntime fell over")
        return PageText(page_number, 595.0, 842.0, [Line([Word(image, 0, 10, 0, 10)])])

    monkeypatch.setattr(ocr, "ocr_image", fake)
    pages = ocr.ocr_images(["p1", "bad", "p3", "p4"])
    assert [p.page_number for p in pages] == [1, 2, 3, 4]
    assert [p.lines[0].text if p.lines else None for p in pages] == ["p1", None, "p3", "p4"]


def test_skew_is_measured_when_the_detector_reports_short_boxes_level() -> None:
    """On the scaled-down detection image a short box's own slope rounds to zero; the tilt still shows
    between a label and its value on one row, and the page is levelled by it."""
    import math

    cx, cy = 827.0, 1169.5
    a = math.radians(0.8)
    boxes, rows = [], []
    for row in range(10):
        for x0, x1 in ((120, 380), (700, 860), (1300, 1480)):  # label, value, amount: short, level boxes
            x, y = (x0 + x1) / 2 - cx, 600 + 45 * row - cy
            xc, yc = cx + x * math.cos(a) + y * math.sin(a), cy - x * math.sin(a) + y * math.cos(a)
            boxes.append(_box(xc - (x1 - x0) / 2, yc - 17, xc + (x1 - x0) / 2, yc + 17))
            rows.append(row)
    tilted = np.asarray(boxes, dtype=np.float32)
    assert np.all(tilted[:, 1, 1] == tilted[:, 0, 1])  # every box level on its own
    spread = np.ptp(tilted.mean(axis=1)[:3, 1])
    assert spread > 15  # the row's amount sits ~20 px above its label: more than half a line
    assert ocr._skew(tilted) == pytest.approx(-a, abs=0.002)
    level = ocr._deskew(tilted, cx, cy).mean(axis=1)
    for row in range(10):
        ys = level[[i for i, r in enumerate(rows) if r == row], 1]
        assert np.ptp(ys) < 2.0
