import pytest

from mstlib.errors import ConfigError
from mstlib.notebook import check_parameters, check_seeds


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
