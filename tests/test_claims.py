"""The book's verdicts from a store of made-up finished runs (no training): the primary comparison stays
out of Holm's family, the family is corrected, exact factors carry no interval, unstored comparisons say
so, and the scale line is config arithmetic."""

from __future__ import annotations

import math

import pytest

from mstlib import claims, experiments
from mstlib import ladder as L
from mstlib.errors import MstError
from mstlib.results import RunStore

from test_fair_test import fake, fill_ladder, jitter


def fake_main(store: RunStore, seeds: list[int], mst_loss: float) -> None:
    loss = {"dense": 4.0, "mst": mst_loss, "rigl": 4.6, "ss": 4.7, "tiny": 4.5}
    for v in experiments.variants_for("main", "smoke", seeds):
        value = loss[v.run.method] + jitter(v.run.seed)
        fake(store, v.run, value)
        store.write_eval(v.run, {"tasks": {"wikitext103": {"ppl_word": math.exp(value)},
                                          "lambada": {"acc": 0.0, "ppl": 1e5}}})


def fake_ablations(store: RunStore, seeds: list[int]) -> None:
    for name in ("sv", "te", "hsa"):
        for v in experiments.variants_for(name, "smoke", seeds):
            if not store.is_done(v.run):
                fake(store, v.run, 5.0 + jitter(v.run.seed) + (0.0 if v.variant in ("full MST", "mixed (MG)") else 0.1))


@pytest.fixture()
def book(tmp_path):
    store = RunStore(tmp_path / "results")
    seeds = [0, 1, 2]
    fake_main(store, seeds, mst_loss=4.005)
    fake_ablations(store, [0, 1])
    for r in L.selection_runs("smoke"):
        if not store.is_done(r.run):
            fake(store, r.run, (4.0 if r.method == "dense" else 4.8) + jitter(r.seed))
    fill_ladder(store)
    return claims.evaluate("smoke", seeds, [0, 1], results_dir=str(store.root), device="cpu")


def test_every_claim_has_a_verdict_and_a_scope(book):
    names = [c.claim for c in book.claims]
    assert names[0] == "4x fewer training FLOPs than dense" and len(names) == 8
    t = book.table()
    assert list(t["claim"]) == names and t["from"].str.len().gt(0).all()
    # exact factors: no interval, no p-value; the construction is said where it holds
    for v in book.parts[names[0]]:
        assert v.exact and math.isnan(v.lo) and math.isnan(v.p_holm)
    assert sum("by construction" in v.claim for v in book.parts[names[0]]) == 2


def test_the_primary_comparison_is_outside_holm_and_the_rest_is_corrected(book):
    quality = book.parts["No loss in quality against dense"]
    primary = next(v for v in quality if v.claim == claims.PRIMARY)
    assert math.isnan(primary.p_holm) and primary.outcome == "not reproduced"  # MST is 1.0 nats worse
    main = next(v for v in quality if "validation loss (main table)" in v.claim)
    assert main.outcome == "reproduced" and main.p_holm >= main.p  # 0.005 nats worse, margin 0.02
    family = [v for vs in book.parts.values() for v in vs if not math.isnan(v.p)]
    assert all(not math.isnan(v.p_holm) for v in family if v.claim != claims.PRIMARY)
    trend = book.parts["The gap to dense shrinks as training grows (our question)"]
    assert trend[0].estimate == pytest.approx(-0.1, abs=1e-6) and trend[1].note.startswith("fewer than two rungs")


def test_unstored_runs_make_a_comparison_inconclusive(tmp_path, monkeypatch):
    # a GPU preset read where nothing is stored and no GPU could train it: every measured comparison is
    # inconclusive and says why; the computed FLOP factors still stand
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    book = claims.evaluate("mini", [0, 1], [0, 1], results_dir=str(tmp_path / "empty"))
    assert book.main.empty and book.chosen is None
    for name, vs in book.parts.items():
        for v in vs:
            if v.exact:
                assert v.outcome in ("reproduced", "not reproduced")
            else:
                assert v.outcome == "inconclusive" and ("not stored" in v.note or "search is not complete" in v.note), v


def test_margins_are_checked():
    with pytest.raises(MstError, match="loss_margin"):
        claims.Margins(loss_margin=-0.1)
    with pytest.raises(MstError, match="alpha"):
        claims.Margins(alpha=1.5)
    with pytest.raises(MstError, match="flops_target"):
        claims.Margins(flops_target=float("nan"))


def test_scale_line_is_config_arithmetic():
    line = claims.scale_line("mini")
    assert "6x384 GPT (29.9M parameters)" in line and "65.5M tokens per run (2.2 per parameter)" in line
    assert "393.2M tokens" in line and "294.9B tokens (2,386 per parameter)" in line


def test_the_scale_table_names_the_gpus_from_the_runs_provenance(book):
    t = claims.scale_table(book, "smoke")
    assert "devices" in t.columns
    stored = t.drop(index="the paper (for scale)")
    assert (stored["devices"] == "fake GPU").all()  # every made-up run's provenance says "fake GPU"
    assert t.loc["the paper (for scale)", "devices"] == "–"  # not available to us, said once in the page's text
