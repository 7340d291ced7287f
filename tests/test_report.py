"""The HTML report: class names in any script draw without tofu or glyph warnings, and
nothing in the plots is cut off."""

import contextlib
import json
import logging
import warnings

import matplotlib.pyplot as plt
import pytest
from matplotlib import font_manager

from resnet_tuner import report

CJK_NAMES = ["长城", "flower 花", "cat"]
MATRIX = [[5, 1, 0], [0, 6, 0], [2, 0, 4]]


def glyphs(family):
    """Code points the font matplotlib picks for `family` has a real glyph for."""
    path = font_manager.findfont(font_manager.FontProperties(family=[family]),
                                 fallback_to_default=False)
    return {code for code, glyph in font_manager.get_font(path).get_charmap().items() if glyph}


def drawable(label):
    """Every character of a tick label is in one of the fonts of its family list."""
    covered = set().union(*(glyphs(f) for f in label.get_fontfamily()))
    return all(ord(ch) in covered for ch in label.get_text())


@contextlib.contextmanager
def font_log():
    """The lines matplotlib's font manager logs at WARNING inside the block."""
    lines = []

    class Catch(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    logger, catch = logging.getLogger("matplotlib.font_manager"), Catch(logging.WARNING)
    logger.addHandler(catch)
    try:
        yield lines
    finally:
        logger.removeHandler(catch)


def draw(fig):
    """Renders `fig` as the report does, returning the warnings matplotlib raised
    and the lines its font manager logged while drawing."""
    with font_log() as lines, warnings.catch_warnings(record=True) as caught, \
            report.quiet_font_weights():
        warnings.simplefilter("always")
        fig.canvas.draw()
    return [str(w.message) for w in caught] + lines


def inside(fig, artist):
    box = artist.get_window_extent()
    return box.x0 >= 0 and box.y0 >= 0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height


def cjk_families():
    """The families that draw `CJK_NAMES` on this machine, or None (CI has no CJK font)."""
    return report.label_fonts(CJK_NAMES, report.font_families())


def test_label_fonts_adds_a_fallback_only_for_missing_glyphs():
    # cmr10 (bundled with matplotlib) has ASCII only; DejaVu Sans has Latin-1 and Cyrillic.
    assert 0x416 not in glyphs("cmr10") and 0x416 in glyphs("DejaVu Sans")
    assert report.label_fonts(["cat", "dog"], ["cmr10", "DejaVu Sans"]) == ["cmr10"]
    assert report.label_fonts(["café", "Жук"], ["cmr10", "DejaVu Sans"]) == ["cmr10",
                                                                             "DejaVu Sans"]
    assert report.label_fonts(["café"], ["cmr10", "no such font"]) is None
    # matplotlib's Last Resort font maps every code point to a box: never a fallback.
    assert report.label_fonts(["长城"], ["DejaVu Sans", "Last Resort High-Efficiency"]) is None


def test_names_draw_with_a_fallback_font_when_one_has_the_glyphs():
    names = ["café", "Жук", "$5 bill"]  # "$" would start mathtext
    fig, legend = report.confusion_matrix_figure(MATRIX, names, "title",
                                                 families=["cmr10", "DejaVu Sans"])
    assert draw(fig) == []
    labels = fig.axes[0].get_xticklabels() + fig.axes[0].get_yticklabels()
    assert [t.get_text() for t in labels] == names + names
    assert all(t.get_fontfamily() == ["cmr10", "DejaVu Sans"] for t in labels)
    assert all(drawable(t) for t in labels)
    assert legend is None
    plt.close(fig)


def test_names_no_font_draws_become_indices_with_a_legend():
    fig, legend = report.confusion_matrix_figure(MATRIX, CJK_NAMES, "title",
                                                 families=["DejaVu Sans"])
    assert not any("Glyph" in w for w in draw(fig))
    labels = fig.axes[0].get_xticklabels() + fig.axes[0].get_yticklabels()
    assert [t.get_text() for t in labels] == ["0", "1", "2"] * 2
    assert all(drawable(t) for t in labels)
    assert legend == list(enumerate(CJK_NAMES))
    plt.close(fig)


@pytest.mark.skipif(cjk_families() is None, reason="no installed font has CJK glyphs")
def test_cjk_names_draw_with_an_installed_cjk_font():
    fonts = cjk_families()
    assert fonts[0] == report.font_families()[0] and len(fonts) == 2  # default + one CJK font
    with font_log() as lines:  # choosing the fonts logs nothing either
        fig, legend = report.confusion_matrix_figure(MATRIX, CJK_NAMES, "title")
    assert draw(fig) == [] and lines == []
    labels = fig.axes[0].get_xticklabels()
    assert [t.get_text() for t in labels] == CJK_NAMES and all(drawable(t) for t in labels)
    assert legend is None
    plt.close(fig)


def test_title_and_long_labels_stay_inside_the_figure():
    names = [f"a rather long class name number {i}" for i in range(3)]
    fig, _ = report.confusion_matrix_figure(
        MATRIX, names, "Test confusion matrix\naccuracy 66.7 % on 18 images",
        families=["DejaVu Sans"])
    draw(fig)
    ax = fig.axes[0]
    assert inside(fig, ax.title)
    assert all(inside(fig, t) for t in ax.get_xticklabels() + ax.get_yticklabels())
    plt.close(fig)


def make_run(root, classes):
    (root / "best").mkdir(parents=True)
    (root / "run.json").write_text(json.dumps({"options": {"space": "quick", "tuner": "random"},
                                               "class_names": classes}))
    (root / "best" / "classes.json").write_text(json.dumps(classes, ensure_ascii=False))
    (root / "best" / "metrics.json").write_text(json.dumps(
        {"confusion_matrix": MATRIX, "accuracy": 15 / 18, "images": 18}))
    return root


@pytest.mark.parametrize("families, names_drawn", [(["DejaVu Sans"], False),
                                                   (None, True)])
def test_report_lists_classes_by_index_when_no_font_draws_them(families, names_drawn, tmp_path,
                                                               monkeypatch):
    if families is None:  # this machine's fonts
        if cjk_families() is None:
            pytest.skip("no installed font has CJK glyphs")
    else:
        monkeypatch.setattr(report, "font_families", lambda: families)
    run = make_run(tmp_path / "run", CJK_NAMES)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        page = report.write_report(run).read_text("utf-8")
    assert not [str(w.message) for w in caught if "Glyph" in str(w.message)]
    assert (run / "report" / "confusion_matrix.png").stat().st_size > 1000
    assert ("<table class='classes'>" in page) is not names_drawn
    if not names_drawn:
        for i, name in enumerate(CJK_NAMES):
            assert f"<tr><td>{i}</td><td>{name}</td></tr>" in page
