"""The checks every notebook runs first: parameter values (check_parameters), and parameter names against
the ``parameters`` cell (check_parameter_names, in papermill-executed notebooks)."""

from pathlib import Path

import nbformat
import papermill
import pytest

from mstlib.errors import ConfigError
from mstlib.notebook import assigned_names, check_parameters, check_seeds, unknown_parameters

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def test_good_parameters_pass_and_seeds_come_back_as_a_list():
    assert check_parameters("smoke", (0, 1), "cuda:1", "results", evaluate=False) == [0, 1]


@pytest.mark.parametrize("kwargs,match", [
    (dict(preset="tiny", seeds=[0]), "preset='tiny' is not one of"),
    (dict(preset="smoke", seeds=[]), "non-empty list"),
    (dict(preset="smoke", seeds=[True]), "non-empty list"),
    (dict(preset="smoke", seeds=[-1]), "non-empty list"),
    (dict(preset="smoke", seeds=[0], device="gpu"), "device='gpu'"),
    (dict(preset="smoke", seeds=[0], results_dir=""), "folder path"),
    (dict(preset="smoke", seeds=[0], evaluate="yes"), "evaluate='yes' must be True or False"),
])
def test_bad_parameters_say_what_to_use(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        check_parameters(**kwargs)


def test_check_seeds_names_the_parameter():
    with pytest.raises(ConfigError, match="ablation_seeds: \\[0, 1, 2\\]"):
        check_seeds("0", "ablation_seeds")


# ---------------------------------------------------------------------------------- parameter names
PARAMS = 'preset = "smoke"  # a comment\nseeds: list = [0]\na, (b, c) = 1, (2, 3)\nif preset:\n    hidden = 1\n'


def test_assigned_names_are_the_top_level_assignments():
    assert assigned_names(PARAMS) == ["preset", "seeds", "a", "b", "c"]


def test_unknown_parameters_compares_the_injected_cell_with_the_cell_before_it():
    injected = '# Parameters\npreset = "mini"\nsedes = [1]\n'
    assert unknown_parameters(["import x", PARAMS, injected, "check()"]) == (
        ["sedes"], ["preset", "seeds", "a", "b", "c"])
    assert unknown_parameters(["import x", PARAMS, '# Parameters\npreset = "mini"\n', "check()"])[0] == []
    assert unknown_parameters([PARAMS, "check()"]) == ([], [])  # not run by papermill: nothing to compare


def _run(nb: Path, out: Path, **parameters):
    return papermill.execute_notebook(str(nb), str(out), parameters=parameters, cwd=str(NOTEBOOKS),
                                      kernel_name="python3", progress_bar=False)


@pytest.mark.slow
@pytest.mark.parametrize("nb,name,valid", [("00_census", "model_sise", "model_size"),
                                           ("08_hyperparameters", "presett", "preset")])
def test_a_misspelt_papermill_parameter_stops_with_the_valid_names(nb, name, valid, tmp_path, kernel_env):
    """papermill only warns about a name the notebook lacks and runs with the default; the notebook refuses."""
    with pytest.raises(papermill.PapermillExecutionError) as info:
        _run(NOTEBOOKS / f"{nb}.ipynb", tmp_path / "out.ipynb", **{name: "smoke"})
    err = info.value
    assert err.ename == "ConfigError" and f"unknown parameter {name!r} (did you mean {valid!r}?)" in err.evalue
    declared = papermill.inspect_notebook(str(NOTEBOOKS / f"{nb}.ipynb"))
    assert all(repr(p) in err.evalue for p in declared)  # every valid name is listed
    code = [c for c in nbformat.read(tmp_path / "out.ipynb", as_version=4).cells if c.cell_type == "code"]
    failing = next(i for i, c in enumerate(code) if any(o.output_type == "error" for o in c.get("outputs", [])))
    assert "injected-parameters" in code[failing - 1].metadata.get("tags", [])  # before any work was done


@pytest.mark.slow
def test_a_correct_papermill_parameter_still_runs(tmp_path, kernel_env):
    nb = _run(NOTEBOOKS / "08_hyperparameters.ipynb", tmp_path / "out.ipynb", preset="smoke")
    assert nb.metadata.papermill.parameters == {"preset": "smoke"}
    assert not any(o.output_type == "error" for c in nb.cells for o in c.get("outputs", []))


def test_the_ablation_chapters_open_through_one_helper():
    """Notebooks 05, 06 and 07 open with notebook.ablation_variants and notebook.collect_ablation."""
    from pathlib import Path

    from mstlib import notebook as nbk

    root = Path(__file__).resolve().parent.parent
    for name, experiment in (("05_ablation_sparsity_variation", "sv"), ("06_ablation_topology", "te"),
                             ("07_ablation_attention", "hsa")):
        src = (root / "notebooks" / f"{name}.py").read_text()
        assert f'notebook.ablation_variants("{experiment}"' in src and f'notebook.collect_ablation("{experiment}"' in src
    seeds, variants = nbk.ablation_variants("te", "mini", [0, 1])
    assert seeds == [0, 1] and {v.run.seed for v in variants} == {0, 1}
    with pytest.raises(ConfigError, match="preset"):
        nbk.ablation_variants("te", "huge", [0])
    ab = nbk.collect_ablation("te", variants, "mini", device="cpu", results_dir=str(root / "results"),
                              allow_missing=True)
    assert ab.order == list(dict.fromkeys(v.variant for v in variants)) and ab.mst.method == "mst"
    assert set(ab.results["variant"]) <= set(ab.order) and len(ab.logs)
