"""backprobe.app.report: the one JSON writer, figure saver, progress and wording."""

from __future__ import annotations

import json

import pytest

from backprobe.app.report import atomic_path, progress_bar, ratio_words, save_figure, write_json


def test_json_never_holds_nan(tmp_path):
    path = write_json(tmp_path / "a.json", {"acc": float("nan"), "x": [1.0, float("inf")],
                                            "n": {"m": float("-inf")}})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"acc": None, "x": [1.0, None], "n": {"m": None}}


def test_writes_are_atomic(tmp_path):
    path = tmp_path / "a.json"
    write_json(path, {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text('{"v": half-writ')
        raise RuntimeError("interrupted mid-write")
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temporary left


def test_figure_saved_atomically_as_its_suffix_says(tmp_path):
    from backprobe.app.report import pyplot

    fig, ax = pyplot().subplots()
    ax.plot([0, 1])
    path = save_figure(fig, tmp_path / "sub" / "f.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["f.png"]


@pytest.mark.parametrize("exact, other, words", [
    (100, 100, "same as exact"), (100, 98, "about the same as exact"),
    (100, 40, "2.5x less"), (100, 130, "1.3x more"), (0, 0, "same as exact"),
])
def test_ratio_words(exact, other, words):
    assert ratio_words(exact, other) == words


def test_progress_without_a_terminal_is_one_line(capsys):
    items = list(progress_bar(range(5), True, desc="compare", unit="run"))
    inner = list(progress_bar(range(3), True, desc="epoch", leave=False))
    assert items == [0, 1, 2, 3, 4] and inner == [0, 1, 2]
    err = capsys.readouterr().err  # pytest's captured stderr is not a terminal
    assert err == "compare: 5 runs\n"
    assert list(progress_bar(range(2), False)) == [0, 1]
