"""Every number the book glues into its prose is the one recorded in tests/fixtures/glue_values.json.

The fixture was taken from the notebooks as committed before the package was laid out anew, and checked
then against a re-execution of every notebook on the stored results (tools/reproduce.py --preset mini
--stored; 13 of 14 notebooks ran, 01_data needs the prepared corpus, and every value of the 13 was equal).
The test reads the committed notebooks (re-executing them all is too slow for the suite). A notebook
re-executed against new results changes its values on purpose: then write the fixture again with
``python tools/glue_values.py --out tests/fixtures/glue_values.json notebooks/`` in the same commit.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "glue_values.json"
_spec = importlib.util.spec_from_file_location("glue_values", ROOT / "tools" / "glue_values.py")
GV = importlib.util.module_from_spec(_spec)
sys.modules["glue_values"] = GV
_spec.loader.exec_module(GV)


def test_every_committed_notebook_glues_the_recorded_values():
    expected = json.loads(FIXTURE.read_text())
    actual = GV.collect([ROOT / "notebooks"])
    assert sorted(actual) == sorted(expected)
    assert GV.differences(expected, actual) == []
    assert sum(len(v) for v in actual.values()) > 200  # the extraction finds the glue outputs


def test_the_comparison_fails_on_a_changed_missing_or_new_value():
    expected = json.loads(FIXTURE.read_text())
    book, name = next((b, n) for b, v in expected.items() for n in v if "text/plain" in v[n])
    changed = copy.deepcopy(expected)
    changed[book][name]["text/plain"] += "1"
    del changed[book][next(n for n in changed[book] if n != name)]
    changed[book]["a_new_value"] = {"text/plain": "0"}
    diffs = GV.differences(expected, changed)
    assert len(diffs) == 3 and any(f"{name} was" in d for d in diffs), diffs


def test_glue_values_are_read_from_the_outputs_papermill_records(tmp_path):
    nb = {"cells": [{"cell_type": "code", "outputs": [
        {"output_type": "display_data",
         "metadata": {"scrapbook": {"name": "x", "mime_prefix": "application/papermill.record/"}},
         "data": {"application/papermill.record/text/plain": "42", "application/papermill.record/image/png": "AAAA"}},
        {"output_type": "display_data", "metadata": {}, "data": {"text/plain": "not glued"}}]}]}
    (tmp_path / "01_x.ipynb").write_text(json.dumps(nb))
    assert GV.collect([tmp_path]) == {"01_x": {"x": {"text/plain": "42", "image/png": "<image/png>"}}}
