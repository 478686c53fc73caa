"""Provenance and the audit record (issue #22, section 2): fingerprints, the JSON record and its schema.

Oracles: the fingerprints are recomputed here with ``hashlib`` from the bytes the definition names
(``docs/definitions/report.md``, *Provenance*), not by the package's code; the reference model's weights and
data (``tests/data/backend_reference.npz``, the same on every backend) have pinned digests, so that this file
run under ``KERAS_BACKEND=jax`` or ``torch`` checks that every backend gives the same fingerprints. The record
is validated with ``jsonschema`` against the schema shipped in the package, and every number the HTML shows is
compared with its twin in the record.
"""

import configparser
import copy
import hashlib
import html
import inspect
import json
import os
import re
import sys

import numpy as np
import pandas as pd
import pytest

import keras

from keras_hybrid_interp import HybridInterpreter, build_report
from keras_hybrid_interp.report import FOLDED_ROWS, PREVIEW_ROWS, VISIBLE_ROWS, report_schema

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
from test_backend_reference import _data as reference_data  # noqa: E402
from test_backend_reference import _load as reference_weights  # noqa: E402

from models import small_cnn  # noqa: E402

jsonschema = pytest.importorskip("jsonschema")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: Digests of the reference model's weights and of its evaluation data (x[48:], y[48:]): bytes only, so they
#: are the same on every backend and Keras version (the architecture's digest depends on Keras' config format).
REFERENCE_WEIGHTS_SHA256 = "214a02eb6b9576f8"
REFERENCE_DATA_SHA256 = "b0667b09d64106b5"
REFERENCE_LABELS_SHA256 = "a4b57222bdf106c7"


def _sha(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.hexdigest()


def _array_digest(a: np.ndarray, batch_axis=True) -> str:
    """The definition: '<dtype> <shape of one sample>\\n', then every value, C order, little-endian."""
    a = np.asarray(a)
    shape = a.shape[1:] if batch_axis else a.shape
    little = a.dtype.newbyteorder("<")
    return _sha(f"{little.str} {tuple(shape)}\n".encode(), a.astype(little).tobytes())


def _model_oracle(model):
    arch = _sha(json.dumps(model.get_config(), sort_keys=True, separators=(",", ":"), default=str).encode())
    h = hashlib.sha256()
    for w in model.get_weights():
        w = np.asarray(w)
        h.update(f"{w.dtype.newbyteorder('<').str} {tuple(w.shape)}\n".encode())
        h.update(w.astype(w.dtype.newbyteorder("<")).tobytes())
    return arch, h.hexdigest(), _sha(f"{arch}\n{h.hexdigest()}".encode())


def _reference():
    x, y = reference_data()
    model = small_cnn(classes=4)
    model.set_weights(reference_weights()[0])
    return model, x, y


@pytest.fixture(scope="module")
def reference():
    model, x, y = _reference()
    interp = HybridInterpreter(model).fit_probes(x[:48], y[:48], random_state=0, verbose=0)
    report = build_report(interp, x[48:], y[48:], examples=1, n_repeats=2, random_state=0)
    return model, interp, x, y, report


def test_fingerprints_are_the_sha256_of_the_documented_bytes_on_every_backend(reference):
    model, interp, x, y, report = reference
    prov = report.provenance
    arch, weights, whole = _model_oracle(model)
    assert prov["model"] == {"name": "small_cnn", "model_sha256": whole, "architecture_sha256": arch,
                             "weights_sha256": weights, "parameters": model.count_params()}
    inputs = _array_digest(x[48:])
    labels = _array_digest(y[48:].astype(np.int64))  # class indices, as the analysis reads them
    assert prov["data"] == {"data_sha256": _sha(f"{inputs}\n{labels}".encode()), "inputs_sha256": [inputs],
                            "labels_sha256": labels, "samples": len(x) - 48}
    # Pinned: the same bytes give the same digests on TensorFlow, JAX and torch.
    assert weights.startswith(REFERENCE_WEIGHTS_SHA256), (keras.config.backend(), weights)
    assert prov["data"]["data_sha256"].startswith(REFERENCE_DATA_SHA256), keras.config.backend()
    assert labels.startswith(REFERENCE_LABELS_SHA256)
    # The same on every run, whatever the batch size (stream order, not batches), and without labels.
    again = build_report(interp, x[48:], y[48:], sections=["layers"], batch_size=7, random_state=1).provenance
    assert again["model"] == prov["model"] and again["data"] == prov["data"]
    unlabelled = build_report(interp, x[48:], sections=["layers"]).provenance["data"]
    assert unlabelled["inputs_sha256"] == [inputs] and unlabelled["labels_sha256"] is None
    assert unlabelled["data_sha256"] == _sha(f"{inputs}\nno labels".encode())


def test_a_changed_weight_or_sample_changes_the_fingerprint(reference):
    model, interp, x, y, report = reference
    prov = report.provenance
    twin = keras.models.clone_model(model)
    weights = [w.copy() for w in model.get_weights()]
    weights[2].flat[5] = np.nextafter(weights[2].flat[5], np.float32(np.inf))  # one ulp of one weight
    twin.set_weights(weights)
    other = HybridInterpreter(twin).fit_probes(x[:48], y[:48], random_state=0, verbose=0)
    changed = build_report(other, x[48:], y[48:], sections=["layers"]).provenance["model"]
    assert changed["weights_sha256"] != prov["model"]["weights_sha256"]
    assert changed["model_sha256"] != prov["model"]["model_sha256"]
    assert model.get_weights()[2].flat[5] != weights[2].flat[5]  # the user's model is untouched
    x2 = x[48:].copy()
    x2[3, 0, 0, 0] += 1e-3
    data = build_report(interp, x2, y[48:], sections=["layers"]).provenance["data"]
    assert data["inputs_sha256"] != prov["data"]["inputs_sha256"] and data["labels_sha256"] == prov["data"][
        "labels_sha256"]
    y2 = y[48:].copy()
    y2[0] = (y2[0] + 1) % 4
    data = build_report(interp, x[48:], y2, sections=["layers"]).provenance["data"]
    assert data["inputs_sha256"] == prov["data"]["inputs_sha256"] and data["labels_sha256"] != prov["data"][
        "labels_sha256"]


def test_provenance_records_versions_every_argument_and_a_seed_that_reruns_the_report(reference):
    _, interp, x, y, report = reference
    prov = report.provenance
    env = prov["environment"]
    assert env["keras"] == keras.__version__ and env["numpy"] == np.__version__
    assert env["backend"] == keras.config.backend() and env["keras_hybrid_interp"]
    params = set(inspect.signature(build_report).parameters) - {"interp"}
    assert set(prov["arguments"]) == params  # every argument (x and y described)
    assert prov["arguments"]["x"] == f"ndarray float32 of shape {x[48:].shape}"
    assert prov["samples"] == len(x) - 48 and prov["wall_time_s"] > 0
    assert prov["random_state"] == 0 and prov["seed"] == 0
    # random_state=None: a fresh seed, recorded; passing it back gives the same report, number for number.
    fresh = build_report(interp, x[48:], y[48:], examples=0, n_repeats=2, sections=["layers", "importance"])
    seed = fresh.provenance["seed"]
    assert fresh.provenance["random_state"] is None and isinstance(seed, int)
    rerun = build_report(interp, x[48:], y[48:], examples=0, n_repeats=2, sections=["layers", "importance"],
                         random_state=seed)
    for a, b in zip(fresh.sections, rerun.sections):
        for (_, _, ta), (_, _, tb) in zip(a.tables, b.tables):
            pd.testing.assert_frame_equal(ta, tb)
    html_text = report.to_html()
    assert "id='provenance'" in html_text and prov["model"]["model_sha256"] in html_text
    assert html_text.index("id='summary'") < html_text.index("id='provenance'") < html_text.index("id='s0'")


def test_the_record_follows_the_shipped_versioned_schema(reference, tmp_path):
    *_, report = reference
    path = report.save(tmp_path / "report.json")
    record = json.loads(open(path, encoding="utf-8").read())
    schema = report_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(record)
    assert record["schema"] == "keras-hybrid-interp/report/1" == schema["properties"]["schema"]["const"]
    assert [s["name"] for s in record["sections"]] == ["blocks", "layers", "explanations", "correlation",
                                                       "association", "importance", "atlas", "similarity"]
    # every table in full, every health finding, the provenance
    for sec, rec in zip(report.sections, record["sections"]):
        assert [len(t) for _, _, t in sec.tables] == [len(t["rows"]) for t in rec["tables"]]
    assert [h["finding"] for h in record["health"]] == [k for k, _ in report.health]
    assert record["provenance"]["model"]["model_sha256"] == report.provenance["model"]["model_sha256"]
    corr = next(s for s in record["sections"] if s["name"] == "correlation")["values"]["correlation"]
    assert np.array(corr, dtype=float).shape == (16, 16)
    # The schema is not vacuous: broken records fail it.
    for breaks in (lambda r: r.pop("provenance"), lambda r: r["provenance"]["model"].update(model_sha256="x"),
                   lambda r: r["sections"][1]["tables"][0]["rows"][0].append({"a": 1}),
                   lambda r: r.update(schema="keras-hybrid-interp/report/2")):
        bad = copy.deepcopy(record)
        breaks(bad)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.Draft202012Validator(schema).validate(bad)


def test_the_schema_ships_as_package_data():
    from importlib import resources

    assert resources.files("keras_hybrid_interp").joinpath("schemas").joinpath("report.schema.json").is_file()
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    assert "schemas/*.json" in cfg["options.package_data"]["keras_hybrid_interp"]
    assert "jsonschema" in cfg["options.extras_require"]["test"]


# ----------------------------------------------------------------------------- the HTML's numbers and their twins

def _cells(table_html):
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", table_html, flags=re.S)
    return [[html.unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", r,
                                                                                      flags=re.S)] for r in rows]


def _shown(v):
    """How the HTML prints a record value (pandas' to_html with float_format '.4g' and na_rep '—')."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _flatten(prefix, value, out):
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix} / {k}" if prefix else k, v, out)
    else:
        out.append((prefix, value))
    return out


def html_vs_record(page, record):
    """Every number (and text) the HTML shows against its twin in the record: (mismatches, numbers compared)."""
    bad, numbers = [], 0

    def same(where, shown, value):
        nonlocal numbers
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            numbers += 1
        if shown != _shown(value) if not isinstance(value, list) else shown != ", ".join(map(_shown, value)):
            bad.append((where, shown, value))

    summary = dict(row[:2] for row in _cells(page[page.index("id='summary'"):page.index("id='provenance'")]))
    for key, value in record["summary"]["values"].items():
        shown = summary[key]
        if value is None or value == []:
            same(key, shown, record["summary"]["notes"].get(key, "none"))
        elif isinstance(value, (list, dict)) and (isinstance(value, dict) or len(value) > 10):
            continue  # counted and linked: test_report_findings
        else:
            same(key, shown, value)
    prov = dict(row[:2] for row in _cells(page[page.index("id='provenance'"):page.index("id='s0'")]))
    for key, value in _flatten("", record["provenance"], []):
        same(key, prov[key], value)
    starts = [page.index(f"<h2 id='s{i}'>") for i in range(len(record["sections"]))] + [page.index("</body>")]
    for i, sec in enumerate(record["sections"]):
        part = page[starts[i]:starts[i + 1]]
        if sec["text"]:
            same(f"{sec['name']} text", html.unescape(re.search(r"<p class='def'>(.*?)</p>", part, re.S).group(1)),
                 sec["text"])
        captions = [html.unescape(c) for c in re.findall(r"</b> (.*?)</figcaption>", part, re.S)]
        for fig, caption in zip(sec["figures"], captions, strict=True):
            same(f"{sec['name']} figure", caption, fig["caption"])
        tables = iter(re.findall(r"<table.*?</table>", part, flags=re.S))
        for table in sec["tables"]:
            folded = VISIBLE_ROWS < len(table["rows"]) <= FOLDED_ROWS  # the whole table under 'Show all'
            shown = [_cells(next(tables))] + ([_cells(next(tables))] if folded else [])
            columns = table["columns"]
            layout = _displayed_columns(columns)
            for grid in shown:  # the preview, then the full table in <details>
                assert grid[0] == [header for header, _ in layout], (sec["name"], grid[0])
                want = table["rows"][:PREVIEW_ROWS] if len(grid) - 1 < len(table["rows"]) else table["rows"]
                assert len(grid) - 1 == len(want), (sec["name"], table["caption"])
                for r, (got_row, row) in enumerate(zip(grid[1:], want)):
                    for (header, sources), cell in zip(layout, got_row, strict=True):
                        where = f"{sec['name']} {table['caption']} [{r}, {header}]"
                        values = [row[columns.index(c)] for c in sources]
                        if len(sources) == 1:
                            same(where, cell, values[0])
                            continue
                        numbers += sum(isinstance(v, float) for v in values)
                        if not _interval_shows(cell, values):
                            bad.append((where, cell, values))
    return bad, numbers


def _displayed_columns(columns):
    """The HTML's columns of a record table: (header, the record columns it shows).

    An interval is one column: ``m`` with ``m_low`` and ``m_high`` under ``"m [interval]"``, a lone
    ``ci_low``/``ci_high`` pair under ``"ci"`` where ``ci_low`` stood (issue 22: "0.99 [0.98, 1.00]").
    """
    pairs = {c[:-4] for c in columns if c.endswith("_low") and f"{c[:-4]}_high" in columns}
    out = []
    for c in columns:
        if c in pairs:
            out.append((f"{c} [interval]", (c, f"{c}_low", f"{c}_high")))
        elif c.endswith("_low") and c[:-4] in pairs and c[:-4] not in columns:
            out.append((c[:-4], (c, f"{c[:-4]}_high")))
        elif not ((c.endswith("_low") or c.endswith("_high")) and c.rsplit("_", 1)[0] in pairs):
            out.append((c, (c,)))
    return out


def _interval_shows(cell, values):
    """Whether ``cell`` ("v [lo, hi]" or "[lo, hi]") prints ``values`` rounded: each number either with 4
    significant digits or with the fixed decimals it is printed with, the same for the three."""
    m = re.fullmatch(r"(?:(\S+) )?\[(\S+), (\S+)\]|(\S+)", cell)
    if m is None:
        return False
    tokens = [m.group(4)] if m.group(4) else [t for t in m.groups()[:3] if t is not None]
    if m.group(4):  # no interval shown: only when a bound is undefined
        return any(v is None for v in values[1:]) and tokens[0] == _shown(values[0])
    if len(tokens) != len(values):
        return False
    decimals = {len(t.split(".")[1]) if "." in t and "e" not in t else None for t in tokens}
    if len(decimals) == 1 and None not in decimals and all(v is not None for v in values):
        d = decimals.pop()
        return all(t == f"{v:.{d}f}" for t, v in zip(tokens, values))
    return all(t == _shown(v) for t, v in zip(tokens, values))


def test_every_number_in_the_html_equals_its_json_twin(reference, tmp_path):
    *_, report = reference
    page = open(report.save(tmp_path / "r.html"), encoding="utf-8").read()
    record = json.loads(open(report.save(tmp_path / "r.json"), encoding="utf-8").read())
    bad, numbers = html_vs_record(page, record)
    assert not bad, bad[:10]
    assert numbers > 500  # every table cell of every section, the summary, the provenance
    # The comparison catches a record that differs from the page by one number.
    tampered = copy.deepcopy(record)
    table = next(s for s in tampered["sections"] if s["name"] == "importance")["tables"][0]
    rows, column = table["rows"], table["columns"].index("importance")
    row = next(r for r in rows if r[column])
    row[column] = row[column] * 1.01 + 1e-3
    assert html_vs_record(page, tampered)[0]
    # Intervals read "0.99 [0.98, 1.00]" (issue 22): the layer table's and the importance table's, and a bound
    # that differs from the record by more than the printed rounding is caught too.
    assert re.search(r"<td>\d\.\d+ \[\d\.\d+, \d\.\d+\]</td>", page) and "<th>accuracy [interval]</th>" in page
    tampered = copy.deepcopy(record)
    table = next(s for s in tampered["sections"] if s["name"] == "layers")["tables"][0]
    table["rows"][0][table["columns"].index("accuracy_high")] += 0.01
    assert html_vs_record(page, tampered)[0]


def test_the_command_line_writes_the_record_with_its_command(tmp_path, capsys):
    from keras_hybrid_interp import cli

    keras.utils.set_random_seed(0)
    small_cnn(classes=3).save(tmp_path / "model.keras")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", images=rng.random((60, 16, 16, 1), dtype=np.float32), labels=np.arange(60) % 3)
    argv = ["analyze", str(tmp_path / "model.keras"), "--data", str(tmp_path / "data.npz"), "--x-key", "images",
            "--y-key", "labels", "--out", str(tmp_path / "out"), "--quiet", "--seed", "3"]
    assert cli.main(argv) == 0
    assert "report.json" in capsys.readouterr().out
    record = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator(report_schema()).validate(record)
    assert record["provenance"]["command_line"].startswith("keras-hybrid-interp analyze ")
    assert record["provenance"]["command_line"].endswith("--quiet --seed 3")
    assert record["provenance"]["seed"] == 3
    model = keras.models.load_model(tmp_path / "model.keras")
    assert record["provenance"]["model"]["weights_sha256"] == _model_oracle(model)[1]
