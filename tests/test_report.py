"""tune_app.report: sections built once as data, rendered to the console, Markdown and HTML (Jinja2), from
hand-built retrain.json payloads (tune_app's image retrain and a user's own trainable). No Ray needed."""
import html.parser

import numpy as np
from markupsafe import escape
from PIL import Image

from tune_app.report import render
from tune_app.report.blocks import Section, Table
from tune_app.report.documents import retrain_console
from tune_app.report.format import fmt, plus_minus, points
from tune_app.report.retrain import retrain_section


def image_retrain(name="vgg6_relu_adam"):
    stats = lambda mean, std: {"mean": mean, "std": std, "n": 3}  # noqa: E731
    return {
        "sweep": "c10", "trainable": "image_classifier", "train_on": "train", "metric": "val_acc",
        "dataset": {"train": 45000, "test": 10000},
        "configs": [{"rank": 1, "trial_name": name, "seeds": [0, 1, 2], "epochs": 30, "search": {"value": 0.9132},
                     "retrain_val": stats(0.9101, 0.0021), "test_acc": stats(0.9054, 0.0017),
                     "gap_search_minus_test": 0.0078,
                     "reproduction": {"seed": 0, "epoch": 30, "sweep": 0.9132, "retrain": 0.9132, "identical": True}},
                    {"rank": 2, "trial_name": "vgg6_gelu_sgd", "seeds": [0, 1, 2], "epochs": 30,
                     "search": {"value": 0.9120}, "retrain_val": stats(0.9110, None), "test_acc": stats(0.9061, None),
                     "gap_search_minus_test": None,
                     "reproduction": {"seed": 0, "epoch": 30, "sweep": 0.9120, "retrain": 0.9118, "identical": False,
                                      "difference": -0.0002}}],
        "ranking": {"k": 2, "test_order": [2, 1], "holds": False, "kendall_tau": -1.0},
        "model": {"rank": 2, "trial_name": "vgg6_gelu_sgd", "seed": 1, "chosen_by": "val_acc", "test_acc": 0.9072},
        "robustness": {"clean_test_acc": 0.9072, "ood_acc": 0.71, "source": None,
                       "per_corruption": {"gaussian_noise": 0.62, "jpeg": 0.80},
                       "sets": [{"corruption": "gaussian_noise", "severity": 1, "acc": 0.70},
                                {"corruption": "gaussian_noise", "severity": 3, "acc": 0.54},
                                {"corruption": "jpeg", "severity": 1, "acc": 0.85}]},
        "most_confused": [{"true": "cat", "predicted": "dog", "count": 57}],
    }


def own_retrain():
    return {"sweep": "f1", "trainable": "own_fit:fit", "metric": "acc", "mode": "max",
            "configs": [{"rank": 1, "trial_id": "00304e51", "trial_name": "fit", "seeds": [0, 1],
                         "search": {"value": 0.8433}, "retrain_val": {"mean": 0.85, "std": 0.0094, "n": 2},
                         "test": {"test_acc": {"mean": 0.7761, "std": 0.0071, "n": 2},
                                  "test_loss": {"mean": 0.61, "std": None, "n": 1}},
                         "reproduction": {"seed": 0, "epoch": 5, "sweep": 0.8433, "retrain": 0.8433,
                                          "identical": True}}],
            "kept": {"rank": 1, "trial_id": "00304e51"}, "test_metrics": {"test_acc": {"mean": 0.7761}}}


class Cells(html.parser.HTMLParser):
    """Every table cell's text and every image source of a page."""

    def __init__(self):
        super().__init__()
        self.cells, self.images, self._in = [], [], False

    def handle_starttag(self, tag, attrs):
        self._in = tag in ("td", "th")
        if tag == "img":
            self.images += [v for k, v in attrs if k == "src"]

    def handle_data(self, data):
        if self._in:
            self.cells.append(data)

    def handle_endtag(self, tag):
        self._in = False


def test_formatting_is_one_rule():
    assert fmt(0.97916, "val_acc") == "97.92" and fmt(0.97916, "val_acc", unit=True) == "97.92 %"
    assert fmt(0.123456, "val_loss") == "0.1235" and fmt(float("nan"), "val_acc") == "n/a"
    assert fmt(None, "x") == "n/a" and fmt(float("inf"), "val_loss") == "n/a"
    assert plus_minus({"mean": 0.91, "std": 0.0021}, "val_acc") == "91.00 % ± 0.21"
    assert plus_minus({"mean": 0.61, "std": None}, "test_loss") == "0.61"
    assert plus_minus({"mean": None, "std": None}, "val_acc") == "n/a"
    assert points(0.0078, "val_acc") == "+0.78 points" and points(-0.5, "val_loss") == "-0.5"


def test_the_same_sections_make_the_same_numbers_in_markdown_console_and_html(tmp_path):
    summary = image_retrain()
    section = retrain_section(summary, tmp_path)
    md, out, page = render.markdown([section]), retrain_console(summary), render.html([section], "t")
    rows = section.tables[0].rows
    assert rows[0] == ["1", "vgg6_relu_adam", "0,1,2", "30", "91.32 %", "91.01 % ± 0.21", "90.54 % ± 0.17",
                       "+0.78 points"]
    assert rows[1][5:] == ["91.10 %", "90.61 %", "n/a"]
    parser = Cells()
    parser.feed(page)
    for row in rows:
        line = "| " + " | ".join(row) + " |"
        assert line in md and line in out
        assert all(cell in parser.cells for cell in row)
    notes = ["Reproduction: vgg6_relu_adam seed 0 at epoch 30: sweep 91.32 %, retrain 91.32 % (identical).",
             "Reproduction: vgg6_gelu_sgd seed 0 at epoch 30: sweep 91.20 %, retrain 91.18 % (differs by -0.0002).",
             "Ranking of the top 2 on the test set: 2 > 1 (the search order does not hold; Kendall tau -1.00).",
             "Model kept: rank 2 vgg6_gelu_sgd seed 1 (chosen by val_acc), test acc 90.72 %."]
    for note in notes:
        assert f"- {note}" in md and f"- {note}" in out and f"<li>{escape(note)}</li>" in page
    # robustness: one row per corruption, severities as columns, a blank where a severity was not scored
    robust = section.children[0].tables[0]
    assert robust.head == ("corruption", "mean", "clean", "severity 1", "severity 3")
    assert robust.rows == [["gaussian_noise", "62.00 %", "90.72 %", "70.00 %", "54.00 %"],
                           ["jpeg", "80.00 %", "90.72 %", "85.00 %", ""]]
    assert "### Accuracy on corrupted test images" in md and "<h3>Accuracy on corrupted test images</h3>" in page
    assert "Retrain on the test set" not in out and "### Accuracy on corrupted test images" in out  # no title


def test_figures_are_linked_in_markdown_and_inlined_in_html(tmp_path):
    (tmp_path / "retrain").mkdir()
    pixels = np.zeros((8, 8, 3), np.uint8)
    pixels[2:6, 2:6] = 200
    Image.fromarray(pixels).save(tmp_path / "retrain" / "confusion_matrix.png")
    section = retrain_section(image_retrain(), tmp_path)
    md, page = render.markdown([section]), render.html([section], "t")
    assert "![Confusion matrix of the kept model on the test set](../retrain/confusion_matrix.png)" in md
    parser = Cells()
    parser.feed(page)
    # the drawn figure is inlined (a data URI: the page needs no other file); samples.png was never drawn
    assert len(parser.images) == 1 and parser.images[0].startswith("data:image/png;base64,")
    import base64

    assert base64.b64decode(parser.images[0].split(",", 1)[1]) == (tmp_path / "retrain" / "confusion_matrix.png"
                                                                    ).read_bytes()


def test_a_retrain_of_a_users_own_trainable_has_its_own_table():
    summary = own_retrain()
    section = retrain_section(summary)
    table = section.tables[0]
    assert table.head == ("rank", "configuration", "seeds", "search", "retrain validation", "test_acc", "test_loss")
    assert table.rows == [["1", "fit", "0,1", "84.33 %", "85.00 % ± 0.94", "77.61 % ± 0.71", "0.61"]]
    out = retrain_console(summary)
    assert "Retrain of f1 (own_fit:fit), metric acc (max)." in out
    assert "- Reproduction: fit seed 0 at epoch 5: sweep 84.33 %, retrain 84.33 % (identical)." in out
    assert "- Kept: rank 1 (00304e51), the best mean validation acc." in out
    summary["test_metrics"] = {}
    summary["configs"][0]["test"] = {}
    assert "No test metrics: the trainable has no evaluate(state, data)." in retrain_console(summary)


def test_html_escapes_what_it_shows():
    evil = "<script>alert(1)</script>"
    section = Section(f"Best {evil}", paragraphs=[evil], items=[("activation", evil)],
                      tables=[Table(("name",), [[evil]], caption=evil)], bullets=[evil])
    page = render.html([section], evil, opening=[evil])
    assert "<script>alert" not in page and page.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 9
    assert render.html([section], "t", scripts=["var x = 1 < 2;"]).count("<script>var x = 1 < 2;</script>") == 1


def test_markdown_escapes_pipes_and_folds_nothing():
    sections = [Section("A", note="first.", tables=[Table(("k", "v"), [["a|b", "1"]], title="k (epoch 3)")]),
                Section("B", collapsed=True, empty="nothing here")]
    md = render.markdown(sections, "Doc", opening=["intro"])
    assert md.splitlines()[:3] == ["# Doc", "", "intro"]
    assert "## A\n\nfirst.\n\n### k (epoch 3)\n\n| k | v |\n| --- | ---: |\n| a\\|b | 1 |" in md
    assert "## B\n\n_nothing here_" in md  # folded only in HTML
    page = render.html(sections, "Doc")
    assert "<details><summary><b>B</b></summary>" in page and "<h2>A</h2>" in page


def test_the_console_lists_a_configuration_under_its_headline():
    section = Section("", paragraphs=["Best trial t (a): val_acc 97.92 %"],
                      items=[("activation", "tanh"), ("lr", "0.01")])
    assert render.console([section]) == "Best trial t (a): val_acc 97.92 %\n  activation: tanh\n  lr: 0.01"
    md = render.markdown([Section("Best configuration", paragraphs=["Best trial t"], items=[("lr", "0.01")])])
    assert "Best trial t\n\n| key | value |\n| --- | --- |\n| lr | 0.01 |" in md
