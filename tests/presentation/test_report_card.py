"""The model card (issue #22, section 2): user-given fields at the top of the report, in its record and its PDF.

Oracles: the expected card is written out by hand here (the fields, their labels and their order), and the
HTML is parsed with regular expressions, the record with ``json`` and ``jsonschema``, the PDF with ``pypdf``,
the YAML card with the file's text as written; nothing is compared with the package's own rendering of it.
"""

import html
import json
import re

import numpy as np
import pytest

import keras

from keras_hybrid_interp import HybridInterpreter, build_report
from keras_hybrid_interp.report import Report, report_schema

from models import small_cnn

jsonschema = pytest.importorskip("jsonschema")

#: A card given in a scrambled order, with text that must survive exactly: markup, quotes, unicode, newlines,
#: surrounding spaces, an empty value.
CARD = {
    "zeta_notes": "  kept with its spaces  ",
    "owners": ["Ana <ana@example.org>", "ML team \u2014 \u00e9quipe"],
    "data": "CT slices, 2019-2023;\nsecond line",
    "intended_use": "Triage only. <script>alert('card')</script> & \"quoted\"",
    "alpha": "",
    "limitations": "Not for children.",
}
#: The order and labels the report must show: the known fields first, in their documented order, then the others
#: in the order given.
SHOWN = [("Intended use", CARD["intended_use"]), ("Limitations", CARD["limitations"]),
         ("Owners", ", ".join(CARD["owners"])), ("Data", CARD["data"]), ("zeta_notes", CARD["zeta_notes"]),
         ("alpha", "")]
ORDER = ["intended_use", "limitations", "owners", "data", "zeta_notes", "alpha"]


@pytest.fixture(scope="module")
def fitted():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.random((48, 16, 16, 1), dtype=np.float32)
    y = np.arange(48) % 3
    interp = HybridInterpreter(small_cnn(classes=3)).fit_probes(x[:24], y[:24], verbose=0)
    return interp, x[24:], y[24:]


@pytest.fixture(scope="module")
def report(fitted):
    interp, x, y = fitted
    return build_report(interp, x, y, sections=["blocks"], random_state=0, card=CARD)


def _card_items(page):
    block = re.search(r"<section id='card'.*?</section>", page, re.S)
    assert block is not None
    pairs = re.findall(r"<dt>(.*?)</dt><dd>(.*?)</dd>", block.group(0), re.S)
    return [(html.unescape(k), html.unescape(v)) for k, v in pairs], block.group(0)


def test_the_card_is_shown_under_the_title_in_order_and_escaped(report, tmp_path):
    page = open(report.save(tmp_path / "r.html"), encoding="utf-8").read()
    items, block = _card_items(page)
    assert items == SHOWN
    # At the top: after the title and the creation line, before the first section (the checks).
    assert page.index("<h1>") < page.index("<section id='card'") < page.index("<h2")
    assert page.index("<section id='card'") < page.index("<h2 id='checks'>")
    assert re.findall(r"<h2[^>]*>([^<]*)</h2>", page)[:2] == ["Checks", "Health"]  # tests/test_browser.py's order
    # Every user string is escaped, wherever it appears (the card, and the provenance's arguments).
    assert "<script>" not in page and "alert('card')</script>" not in page
    assert "&lt;script&gt;" in block and "&lt;ana@example.org&gt;" in block


def test_the_record_keeps_the_card_exactly_and_follows_the_schema(report, tmp_path):
    record = json.loads(open(report.save(tmp_path / "r.json"), encoding="utf-8").read())
    jsonschema.Draft202012Validator(report_schema()).validate(record)
    assert record["card"] == CARD  # every value, as given
    assert list(record["card"]) == ORDER
    assert record["provenance"]["arguments"]["card"] == CARD  # an argument of build_report like the others
    assert report.card == CARD and list(report.card) == ORDER
    assert "card" not in record["summary"]["values"]
    # The schema refuses what the card cannot hold.
    schema = jsonschema.Draft202012Validator(report_schema())
    for bad in ({"limitations": ["a list"]}, {"owners": [1]}, {"": "empty key"}, {"data": 3}):
        with pytest.raises(jsonschema.ValidationError):
            schema.validate({**record, "card": bad})
    # The folder's summary.json holds it too.
    report.save_dir(tmp_path / "out", formats=["png"])
    assert json.loads((tmp_path / "out" / "summary.json").read_text(encoding="utf-8"))["card"] == CARD


def test_a_report_without_a_card_shows_none(fitted, tmp_path):
    interp, x, y = fitted
    rep = build_report(interp, x, y, sections=["blocks"], random_state=0)
    assert "id='card'" not in rep.to_html()
    record = rep.to_record()
    assert record["card"] == {}
    jsonschema.Draft202012Validator(report_schema()).validate(json.loads(json.dumps(record)))


def test_the_pdf_opens_with_the_card(fitted, tmp_path):
    pypdf = pytest.importorskip("pypdf")
    interp, x, y = fitted
    card = {"owners": "Vision team", "intended_use": "Quality control of printed labels"}
    rep = build_report(interp, x, y, sections=["blocks"], random_state=0, card=card)
    text = pypdf.PdfReader(rep.save(tmp_path / "r.pdf")).pages[0].extract_text()
    flat = " ".join(text.split())
    order = ["Created", "Model card", "Intended use", "Quality control of printed labels", "Owners", "Vision team",
             "Checks"]
    assert all(w in flat for w in order), flat[:300]
    assert [flat.index(w) for w in order] == sorted(flat.index(w) for w in order), flat[:300]


@pytest.mark.parametrize("card, error, match", [
    (["intended_use", "x"], TypeError, r"`card` must be a mapping.*known fields are \['intended_use', "
                                       r"'limitations', 'owners', 'data'\].*received list"),
    ("intended use: x", TypeError, r"`card` must be a mapping.*received str"),
    ({"": "x"}, ValueError, r"`card`.*received an empty key ''"),
    ({"  ": "x"}, ValueError, r"`card`.*received an empty key '  '"),
    ({1: "x"}, TypeError, r"`card`.*received a key of type int"),
    ({"intended_use": 3}, TypeError, r"`card`.*received `card\['intended_use'\]` of type int: 3"),
    ({"limitations": ["a", "b"]}, TypeError, r"`card\['limitations'\]` of type list.*only `owners` may be a list"),
    ({"owners": ["a", None]}, TypeError, r"`card\['owners'\]` holding NoneType None"),
    ({"owners": {"a": "b"}}, TypeError, r"`card\['owners'\]` of type dict"),
])
def test_a_bad_card_is_refused_before_any_data_is_read(fitted, monkeypatch, card, error, match):
    from keras_hybrid_interp.core import data_pass

    interp, x, y = fitted
    monkeypatch.setattr(data_pass, "run", lambda *a, **k: pytest.fail("the data was read"))
    with pytest.raises(error, match=match):
        build_report(interp, x, y, card=card)
    with pytest.raises(error, match=match):
        Report("t", card=card)


def test_owners_may_be_one_string_or_a_tuple():
    assert Report("t", card={"owners": "Ana"}).card == {"owners": "Ana"}
    assert Report("t", card={"owners": ("Ana", "Bo")}).card == {"owners": ["Ana", "Bo"]}


# ----------------------------------------------------------------------------- the command line's --card

YAML_CARD = """\
# a model card
intended_use: "Screening, not diagnosis: <b>read by a person</b>"
owners:
  - Ana
  - Bo
limitations: |
  Trained on adults only.
  Not validated on scanner B.
data: "MNIST-like digits, 16x16"
review_date: "2024-05-01"
"""
YAML_EXPECTED = {"intended_use": "Screening, not diagnosis: <b>read by a person</b>",
                 "limitations": "Trained on adults only.\nNot validated on scanner B.\n", "owners": ["Ana", "Bo"],
                 "data": "MNIST-like digits, 16x16", "review_date": "2024-05-01"}


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("card_cli")
    keras.utils.set_random_seed(0)
    small_cnn(classes=2).save(d / "model.keras")
    rng = np.random.default_rng(0)
    np.savez(d / "data.npz", x=rng.random((40, 16, 16, 1), dtype=np.float32), y=np.arange(40) % 2)
    return d


def test_the_command_line_reads_a_json_card(tmp_path):
    from keras_hybrid_interp import cli

    path = tmp_path / "card.json"
    path.write_text(json.dumps(CARD), encoding="utf-8")
    # The reader analyze and demo call (main -> _load_card -> build_report(card=...)); the whole run is tested with
    # the YAML card below, whose reading is the only part that differs.
    card = cli._load_card(str(path))
    assert card == CARD and list(card) == ORDER
    # A .JSON (any case) is JSON; only .yaml and .yml are read as YAML.
    upper = tmp_path / "CARD.JSON"
    upper.write_text(json.dumps({"data": "d: x"}), encoding="utf-8")
    assert cli._load_card(str(upper)) == {"data": "d: x"}


def test_the_command_line_writes_a_yaml_card_into_the_report(cli_files, tmp_path, capsys):
    from keras_hybrid_interp import cli

    path, expected = tmp_path / "card.yml", YAML_EXPECTED
    path.write_text(YAML_CARD, encoding="utf-8")
    out = tmp_path / "out"
    argv = ["analyze", str(cli_files / "model.keras"), "--data", str(cli_files / "data.npz"), "--out", str(out),
            "--quiet", "--card", str(path)]
    assert cli.main(argv) == 0, capsys.readouterr().err
    record = json.loads((out / "report.json").read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator(report_schema()).validate(record)
    assert record["card"] == {k: expected[k] for k in [k for k in ORDER if k in expected]
                              + [k for k in expected if k not in ORDER]}
    assert list(record["card"])[:2] == ["intended_use", "limitations"]
    assert record["provenance"]["command_line"].endswith(f"--card {path}")
    page = (out / "report.html").read_text(encoding="utf-8")
    items, _ = _card_items(page)
    assert dict(items)["Intended use"] == expected["intended_use"]
    assert "<b>read by a person</b>" not in page


def _yaml_date_file(p):
    p.write_text("intended_use: screening\nreview_date: 2024-05-01\n", encoding="utf-8")


@pytest.mark.parametrize("name, content, match", [
    ("missing.json", None, r"--card: no such file: .*missing\.json"),
    ("bad.json", '{"intended_use": "x",}', r"--card .*bad\.json: not valid JSON"),
    ("bad.yaml", "intended_use: [unclosed\n", r"--card .*bad\.yaml: not valid YAML"),
    ("list.yaml", "- intended_use\n- owners\n", r"--card .*list\.yaml: `card` must be a mapping.*received list"),
    ("date.yml", _yaml_date_file, r"`card\['review_date'\]` of type date.*in YAML, quote a value"),
    ("number.json", '{"version": 2}', r"`card\['version'\]` of type int: 2"),
    ("empty.yaml", "", r"--card .*empty\.yaml: the card is empty"),
    ("empty.json", "{}", r"--card .*empty\.json: the card is empty"),
])
def test_a_bad_card_file_gets_one_line_naming_card(tmp_path, capsys, name, content, match):
    from keras_hybrid_interp import cli

    path = tmp_path / name
    if callable(content):
        content(path)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    # The card is read before the model: a bad card fails fast, whatever the other arguments.
    argv = ["analyze", str(tmp_path / "no_model.keras"), "--data", str(tmp_path / "no.npz"), "--out",
            str(tmp_path / "out"), "--card", str(path)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("keras-hybrid-interp analyze: error: --card"), err
    assert re.search(match, err), err
    assert not (tmp_path / "out").exists()


def test_the_demo_takes_a_card_too():
    from keras_hybrid_interp import cli

    args = cli.build_parser().parse_args(["demo", "--card", "card.json"])
    assert args.card == "card.json"
