"""One copy of a training set per machine (searchsr.imagecache): processes map one cache file,
keyed by the images' bytes; memory is measured, not assumed."""

import json
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
from PIL import Image

import searchsr.data as data
from searchsr.data import load_folder
from searchsr.imagecache import cached_arrays

# A trial's process: load the folder, read every byte (as sampling would), say so, and when told (every
# trial has loaded) report its anonymous (private) memory growth and its share (Pss) of the mapped cache
# file; then wait until told to exit.
TRIAL = """
import json, sys
def anon():
    rollup = open("/proc/self/smaps_rollup").read().split()
    return int(rollup[rollup.index("Anonymous:") + 1]) * 1024
def cache_pss():
    total, inside = 0, False
    for line in open("/proc/self/smaps"):
        parts = line.split()
        if "-" in parts[0] and len(parts) >= 5:
            inside = parts[-1].endswith(".u8")
        elif inside and parts[0] == "Pss:":
            total += int(parts[1]) * 1024
    return total
from searchsr.data import load_folder
before = anon()
images = load_folder(sys.argv[1], 4)
total = sum(int(p.hr.sum()) + int(p.lr.sum()) for p in images.images)
print("loaded", flush=True)
sys.stdin.readline()
print(json.dumps({"anon": anon() - before, "cache_pss": cache_pss(),
                  "bytes": sum(p.hr.nbytes + p.lr.nbytes for p in images.images)}), flush=True)
sys.stdin.read()
"""


@pytest.fixture()
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (720, 960, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def _concurrent_trials(folder, cache, count=2):
    env = {**os.environ, "SEARCHSR_CACHE": str(cache)}
    procs = [subprocess.Popen([sys.executable, "-c", TRIAL, str(folder)], env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(count)]
    try:
        assert all(p.stdout.readline() == "loaded\n" for p in procs)  # all alive, each holding its images
        for p in procs:
            p.stdin.write("measure\n")
            p.stdin.flush()
        return [json.loads(p.stdout.readline()) for p in procs]
    finally:
        for p in procs:
            p.communicate("")


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps_rollup"), reason="needs Linux /proc")
def test_two_trials_on_a_node_share_one_copy(photos, tmp_path, monkeypatch):
    monkeypatch.setenv("SEARCHSR_CACHE", str(tmp_path / "cache"))
    data._cached_pairs.cache_clear()
    load_folder(photos, 4)  # the machine's first load writes the cache
    shared = _concurrent_trials(photos, tmp_path / "cache")
    size = shared[0]["bytes"]
    assert size > 10_000_000
    # Each trial's private memory for the set is a small fraction of it: both read the one mapped file,
    # whose pages they share (each one's Pss is about half of it); together about one copy.
    assert all(t["anon"] < 0.1 * size for t in shared), shared
    assert all(0.4 * size < t["cache_pss"] < 0.6 * size for t in shared), shared
    assert sum(t["anon"] + t["cache_pss"] for t in shared) <= 1.2 * size, shared
    # Without the cache, every trial holds its own copy (what the test above would see if sharing broke).
    private = _concurrent_trials(photos, "off")
    assert all(t["anon"] > 0.9 * size and t["cache_pss"] == 0 for t in private), private


def test_a_copied_folder_hits_and_an_edited_image_misses(photos, tmp_path, monkeypatch):
    monkeypatch.setenv("SEARCHSR_CACHE", str(tmp_path / "cache"))
    data._cached_pairs.cache_clear()
    first = load_folder(photos, 4)
    assert not first.images[0].hr.flags.writeable  # a read-only view of the mapped file
    copy = tmp_path / "copy"
    shutil.copytree(photos, copy)
    monkeypatch.setattr(data, "make_pair", lambda *a, **k: pytest.fail("recomputed a cached folder"))
    again = load_folder(copy, 4)  # keyed by bytes, not by path: nothing decoded
    assert all(np.array_equal(a.lr, b.lr) for a, b in zip(first.images, again.images))
    assert again.images[0].path == str(copy / "0.png")
    monkeypatch.undo()
    monkeypatch.setenv("SEARCHSR_CACHE", str(tmp_path / "cache"))
    Image.fromarray(np.zeros((720, 960, 3), np.uint8)).save(copy / "0.png")
    edited = load_folder(copy, 4)
    assert edited.images[0].hr.max() == 0 and first.images[0].hr.max() > 0
    assert len(list((tmp_path / "cache" / "images").glob("*.json"))) == 2


def test_an_incomplete_entry_is_rebuilt_and_an_unwritable_cache_only_warns(tmp_path, monkeypatch):
    arrays = [(np.full((8, 8, 3), 9, np.uint8), np.full((2, 2, 3), 9, np.uint8))]
    identity = [("a.png", "digest")]
    monkeypatch.setenv("SEARCHSR_CACHE", str(tmp_path / "cache"))
    cached_arrays(identity, 4, lambda: arrays)
    (data_file,) = (tmp_path / "cache" / "images").glob("*.u8")
    data_file.write_bytes(data_file.read_bytes()[:-1])  # a torn write
    calls = []
    rebuilt = cached_arrays(identity, 4, lambda: calls.append(1) or arrays)
    assert calls == [1] and np.array_equal(rebuilt[0][0], arrays[0][0])

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("SEARCHSR_CACHE", str(blocker))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = cached_arrays(identity, 4, lambda: arrays)
    assert got is arrays and "not writable" in str(caught[0].message)
