"""The data path at real-dataset scale, on real files: shards, subsets, missing videos, the dry
run's projection and the free-space check (the JPEG frame store is in test_extract_cache.py)."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest

from stages.core.errors import UserError
from stages.data.annotations import VideoRecord
from stages.data.video_selection import WHOLE, Shard, parse_shard, select
from tests.helpers import run_cli, start_etad, tiny_data, write_config


def test_a_shard_is_k_of_n_from_the_option_or_the_slurm_array():
    assert parse_shard("3/8", env={}) == Shard(3, 8)
    assert parse_shard(None, env={}) == WHOLE
    slurm = {"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "8", "SLURM_ARRAY_TASK_MIN": "0"}
    assert parse_shard(None, env=slurm) == Shard(5, 8)
    assert parse_shard("1/2", env=slurm) == Shard(1, 2)  # the option wins
    for bad in ("3/2", "0/2", "2", "a/b", "1/0"):
        with pytest.raises(UserError, match="shard|K/N"):
            parse_shard(bad, env={})


def test_shards_split_the_chosen_subsets_without_overlap():
    records = {
        f"v{i:02d}": VideoRecord(f"v{i:02d}", ("training", "validation", "testing")[i % 3], 10.0)
        for i in range(20)
    }
    chosen = select(records, ["training", "validation"], WHOLE, where="x")
    assert len(chosen) == 14 and not any(records[v].subset == "testing" for v in chosen)
    parts = [select(records, ["training", "validation"], Shard(k, 3), where="x") for k in (1, 2, 3)]
    assert sorted(sum(parts, [])) == chosen and sum(map(len, parts)) == len(chosen)
    assert len(select(records, None, WHOLE, where="x")) == 20
    for wrong in (["pretraining"], ["training", "validaton"]):  # a misspelled name never drops its videos
        with pytest.raises(UserError, match="no subset named .*the file has testing, training, validation"):
            select(records, wrong, WHOLE, where="x")


def _config(tmp_path, synth_dir, work: str = "work", **data) -> str:
    config = {
        "work_dir": str(tmp_path / work),
        "data": tiny_data(synth_dir, **data),
        "model": {"encoder": {"name": "tiny", "crop_size": 24}},
    }
    return write_config(tmp_path / f"{work}.yaml", config)


def _contents(folder):
    """Every cache file's datasets and attributes."""
    out = {}
    for path in sorted(folder.glob("*.h5")):
        with h5py.File(path) as f:
            out[path.name] = ({k: f[k][()] for k in f}, dict(f.attrs))
    return out


@pytest.mark.slow
def test_two_shards_at_once_on_one_folder_give_the_files_of_one_run(tmp_path, synth_dir):
    whole = _config(tmp_path, synth_dir, "whole")
    assert start_etad("cache", "-c", whole, "--subset", "all").wait() == 0
    sharded = _config(tmp_path, synth_dir, "sharded")
    first, second = (
        start_etad("cache", "-c", sharded, "--subset", "all", "--shard", f"{k}/2", "--workers", "2")
        for k in (1, 2)
    )
    assert first.wait() == 0 and second.wait() == 0, first.stderr.read() + second.stderr.read()
    one, two = tmp_path / "whole/cache/snippets", tmp_path / "sharded/cache/snippets"
    assert sorted(p.name for p in two.glob("*.h5")) == sorted(p.name for p in one.glob("*.h5"))
    a, b = _contents(one), _contents(two)
    for name in a:
        assert a[name][1] == b[name][1]
        assert all(np.array_equal(a[name][0][k], b[name][0][k]) for k in a[name][0])
    assert json.loads((two / "failures.shard1of2.json").read_text()) == []
    assert not list(two.glob(".*tmp*"))  # no temporary left behind


def _numbers(value) -> list[float]:
    """Every number in a JSON value, in order."""
    if isinstance(value, dict):
        return [x for v in value.values() for x in _numbers(v)]
    if isinstance(value, list):
        return [x for v in value for x in _numbers(v)]
    return [value] if isinstance(value, (int, float)) else []


@pytest.mark.slow
def test_infer_shards_merge_into_the_output_of_one_run(trained, tmp_path):
    root = tmp_path / "tiny"
    shutil.copytree(trained, root)
    config = root / "tiny.yaml"
    assert run_cli("infer", "-c", config, "--set", "infer.output=results/whole.json").returncode == 0
    sets = ["--set", "infer.output=results/sharded.json"]
    results = root / "work/results"
    for k in (1, 2, 3):
        done = run_cli("infer", "-c", config, *sets, "--shard", f"{k}/3", *(["--eval"] if k == 3 else []))
        assert done.returncode == 0, done.stderr
        assert (results / f"sharded.shard{k}of3.json").is_file()
        assert (results / "sharded.json").is_file() == (k == 3)  # the last shard merges the three parts
    assert "all 3 parts merged" in done.stdout and "average" in done.stdout  # --eval once complete
    for name in ("{}.json", "{}.classes.json"):  # equal up to float rounding (other batches)
        whole = json.loads((results / name.format("whole")).read_text())
        sharded = json.loads((results / name.format("sharded")).read_text())
        assert sharded.keys() == whole.keys() and sharded["results"].keys() == whole["results"].keys()
        for video, expected in whole["results"].items():
            close = pytest.approx(_numbers(expected), rel=1e-4, abs=1e-6)
            assert _numbers(sharded["results"][video]) == close
            if name == "{}.json":
                assert [d["label"] for d in sharded["results"][video]] == [d["label"] for d in expected]
    parts = [json.loads((results / f"sharded.shard{k}of3.json").read_text())["results"] for k in (1, 2, 3)]
    assert sorted(v for part in parts for v in part) == sorted(whole["results"])  # 2 videos: one part empty
    checkpoint = root / "work/pretrain/checkpoints/last.pt"
    checkpoint.touch()  # another checkpoint now: the old parts are not merged with its part
    (results / "sharded.json").unlink()
    done = run_cli("infer", "-c", config, *sets, "--shard", "1/3")
    assert done.returncode == 0 and "waiting for the other shards" in done.stdout
    assert not (results / "sharded.json").exists()


@pytest.mark.slow
def test_dry_run_projects_the_bytes_a_real_run_writes(tmp_path, synth_dir, cli):
    config = _config(tmp_path, synth_dir)
    result = cli("cache", "-c", config, "--dry-run", "--json")
    assert result.returncode == 0, result.output
    projection = json.loads(result.stdout)
    assert {"videos", "frames", "projected_bytes"} <= set(projection) and projection["videos"] == 6
    assert not (tmp_path / "work/cache/snippets").exists() or not list(
        (tmp_path / "work/cache").rglob("*.h5")
    )
    assert cli("cache", "-c", config).returncode == 0
    written = sum(p.stat().st_size for p in (tmp_path / "work/cache/snippets").glob("*.h5"))
    assert abs(projection["projected_bytes"] - written) <= 0.25 * written, (projection, written)
    again = json.loads(cli("cache", "-c", config, "--dry-run", "--json").stdout)
    assert again["videos"] == 0 and again["cached"] == 6


@pytest.mark.slow
def test_missing_videos_stop_the_run_or_are_listed_and_skipped(tmp_path, synth_dir, cli):
    data = tmp_path / "data"
    shutil.copytree(synth_dir, data)
    config = _config(tmp_path, data)
    assert cli("cache", "-c", config).returncode == 0
    cached = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "work/cache/snippets").glob("*.h5")}
    gone = sorted(cached)[0].removesuffix(".h5")
    (data / "videos" / f"{gone}.mp4").unlink()
    (tmp_path / "work/cache/snippets" / f"{gone}.h5").unlink()
    result = cli("cache", "-c", config)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert (
        len(lines) == 1
        and "1 of 6 videos have no video file" in lines[0]
        and "data.missing: skip" in lines[0]
        and f"videos named {{id}}.mp4 in {data / 'videos'}" in lines[0]  # where, and the patterns tried
    )
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "work/cache/snippets").glob("*.h5")}
    assert after == {k: v for k, v in cached.items() if k != f"{gone}.h5"}  # nothing cached lost or redone
    result = cli("cache", "-c", config, "--set", "data.missing=skip")
    assert result.returncode == 0, result.output
    assert json.loads((tmp_path / "work/cache/snippets/missing.json").read_text()) == [gone]
    result = cli("extract", "-c", config)
    assert result.returncode == 2 and "1 of 6 videos have no video file" in result.stderr
    assert f"in {data / 'videos'} (named {{id}}.mp4)" in " ".join(result.stderr.split())


@pytest.mark.slow
def test_a_disk_too_small_is_refused_before_any_work(tmp_path, synth_dir, cli, monkeypatch):
    from stages import cache

    config = _config(tmp_path, synth_dir)
    real = shutil.disk_usage
    monkeypatch.setattr(cache.shutil, "disk_usage", lambda p: real(p)._replace(free=10_000))
    result = cli("cache", "-c", config)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "needs about" in lines[0] and "free" in lines[0]
    assert not list((tmp_path / "work/cache/snippets").glob("*.h5"))
