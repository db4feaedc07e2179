"""Shipped schedules and the validation of schedule files."""

import pytest

from searchsr.schedule import Schedule, load_schedule, shipped_schedules


def test_full_is_the_papers_schedule():
    full = load_schedule("full")
    assert (full.steps, full.batch_size, full.patch_size) == (350_000, 128, 100)
    assert full.lr == 0.005
    assert full.milestones == (100_000, 200_000, 250_000, 300_000)
    assert full.betas == (0.9, 0.99)


def test_shipped_schedules_load():
    assert {"full", "medium", "short", "smoke"} <= set(shipped_schedules())
    short, medium, smoke = load_schedule("short"), load_schedule("medium"), load_schedule("smoke")
    assert smoke.steps < short.steps < medium.steps < 10_000
    for schedule in (short, medium):
        assert schedule.lr == 0.005 and schedule.betas == (0.9, 0.99)
        # The CPU schedules keep the paper's shape: halvings at 2/7, 4/7, 5/7, 6/7 of the run.
        assert [round(7 * m / schedule.steps, 1) for m in schedule.milestones] == [2, 4, 5, 6]


def test_a_file_path_works(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("steps: 10\nbatch_size: 4\npatch_size: 24\nlr: 0.001\nmilestones: [5]\n")
    s = load_schedule(str(path))
    assert s == Schedule("mine", 10, 4, 24, 0.001, (5,))


@pytest.mark.parametrize("body, message", [
    ("stpes: 10", "unknown key 'stpes'"),
    ("steps: ten", "key 'steps' must be an integer >= 1, got 'ten'"),
    ("steps: true", "key 'steps' must be an integer >= 1, got True"),
    ("lr: 5e-3", "write 5.0e-3"),
    ("lr: -0.1", "key 'lr' must be a positive number"),
    ("milestones: [8, 4]", "key 'milestones' must be increasing"),
    ("milestones: [10]", "between 0 and steps"),
    ("betas: [0.9]", "key 'betas' must be two numbers"),
    ("val_every: -1", "key 'val_every' must be an integer >= 0"),
])
def test_bad_files_name_file_and_key(tmp_path, body, message):
    base = {"steps": "10", "batch_size": "4", "patch_size": "24", "lr": "0.001", "milestones": "[4, 8]"}
    key, _, value = body.partition(": ")
    base[key] = value
    path = tmp_path / "bad.yaml"
    path.write_text("".join(f"{k}: {v}\n" for k, v in base.items()))
    with pytest.raises(ValueError, match=r"bad\.yaml: .*") as err:
        load_schedule(str(path))
    assert message in str(err.value)


def test_missing_key_and_non_mapping(tmp_path):
    path = tmp_path / "short.yaml"
    path.write_text("steps: 10\n")
    with pytest.raises(ValueError, match="short.yaml: missing key 'batch_size'"):
        load_schedule(str(path))
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="must be a mapping"):
        load_schedule(str(path))
    path.write_text("steps: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_schedule(str(path))


def test_unknown_name():
    with pytest.raises(ValueError, match="unknown schedule 'forever'"):
        load_schedule("forever")
