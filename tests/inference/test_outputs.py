"""stages/inference/outputs.py: the parts of a sharded infer, merged only when well formed and of the
same checkpoint and settings."""

from __future__ import annotations

import json
import shutil

from tests.helpers import run_cli


def test_sharded_infer_merges_only_well_formed_parts_of_the_same_settings(trained, tmp_path):
    root = tmp_path / "tiny"
    shutil.copytree(trained, root)
    config, results = root / "tiny.yaml", root / "work" / "results"
    sets = ["--set", "infer.output=results/sharded.json"]
    assert run_cli("infer", "-c", config, *sets, "--set", "infer.top_k=3", "--shard", "1/2").returncode == 0
    done = run_cli("infer", "-c", config, *sets, "--shard", "2/2")
    assert done.returncode == 0 and "waiting for the other shards" in done.stdout  # top_k differs: not merged
    assert run_cli("infer", "-c", config, *sets, "--shard", "1/2").returncode == 0
    assert (results / "sharded.json").is_file()
    part_path = results / "sharded.shard1of2.json"
    part = json.loads(part_path.read_text())
    video = next(v for v, dets in part["results"].items() if dets)
    edits = {
        "a NaN score": ("score", float("nan"), "score nan is not finite"),
        "a reversed segment": ("segment", [5.0, 1.0], "ends before it starts"),
        "an id outside the folder": (None, None, "contains the path separator '/'"),
    }
    for name, (key, value, message) in edits.items():
        edited = json.loads(json.dumps(part))
        if key is None:
            edited["results"]["../escape"] = edited["results"].pop(video)
        else:
            edited["results"][video][0][key] = value
        part_path.write_text(json.dumps(edited))
        result = run_cli("infer", "-c", config, *sets, "--shard", "2/2")
        assert result.returncode == 2, name
        assert str(part_path) in result.stderr and message in " ".join(result.stderr.split()), name
    # a part that does not read as JSON is taken for one being written (the rename is atomic: a kill
    # mid-write); a JSON value that is not a part is refused with how to redo it
    part_path.write_bytes(b"\xff\xfe not UTF-8")
    result = run_cli("infer", "-c", config, *sets, "--shard", "2/2")
    assert result.returncode == 0 and "waiting for the other shards" in result.stdout
    part_path.write_bytes(b"[1, 2]")
    result = run_cli("infer", "-c", config, *sets, "--shard", "2/2")
    assert (
        result.returncode == 2 and "not a shard part" in result.stderr and "rerun shard 1/2" in result.stderr
    )
    assert json.loads((results / "sharded.json").read_text())  # the earlier merge is valid JSON
