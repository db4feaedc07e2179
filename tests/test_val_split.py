"""--val-count: a held-out validation split of the training folder, deterministic by file name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from searchsr.data import held_out, load_split


def _folder(path: Path, names: list[str]) -> Path:
    path.mkdir()
    for i, name in enumerate(names):
        Image.fromarray(np.full((64, 64, 3), 10 * i, np.uint8)).save(path / name)
    return path


def test_held_out_images_depend_only_on_their_names(tmp_path: Path) -> None:
    names = [f"{i:03d}.png" for i in range(20)]
    paths = [tmp_path / n for n in names]
    chosen = held_out(paths, 4)
    assert len(chosen) == 4 and chosen == sorted(chosen)
    assert held_out(list(reversed(paths)), 4) == chosen  # not the listing order
    assert held_out(paths, 4) != paths[:4]  # spread by hash, not the first names
    more = held_out(paths + [tmp_path / "zzz_new.png"], 5)
    assert set(chosen) <= set(more)  # an image keeps its side when another is added


def test_load_split_never_validates_on_training_images(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "photos", [f"{i}.png" for i in range(6)])
    train, val = load_split(folder, None, 4, val_count=2)
    train_names, val_names = {p.name for p in train.images}, {p.name for p in val.images}
    assert len(train_names) == 4 and len(val_names) == 2 and not train_names & val_names
    assert "held out for validation" in val.source
    again = load_split(folder, None, 4, val_count=2)[1]
    assert {p.name for p in again.images} == val_names


@pytest.mark.parametrize("train, val, count, message", [
    (None, None, 1, "give --train-dir"),
    ("photos", "photos", 1, "give one"),
    ("photos", None, 3, r"has 3 image\(s\)"),
    ("photos", None, -1, "must be >= 0"),
])
def test_bad_val_count_is_one_line(tmp_path: Path, train: str | None, val: str | None, count: int,
                                   message: str) -> None:
    folder = _folder(tmp_path / "photos", ["a.png", "b.png", "c.png"])
    with pytest.raises(ValueError, match=message):
        load_split(folder if train else None, folder if val else None, 4, val_count=count)


def test_train_holds_out_its_validation_images(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import json

    from searchsr.cli import main

    folder = _folder(tmp_path / "photos", [f"{i}.png" for i in range(4)])
    assert main(["train", "--set", "nf=8", "--set", "n_blocks=1", "--schedule", "smoke", "--train-dir", str(folder),
                 "--val-count", "1", "--out", str(tmp_path / "run"), "--no-progress", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["val"]["images"] == 1
