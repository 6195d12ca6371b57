"""`etad train --encoder` (TSP pretraining): clip labels, a trained encoder that a linear probe reads
better than a random one, and a checkpoint that the other stages load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stages.core.settings_file import load_settings
from stages.model.encoder import build_encoder, center_crop
from stages.train_encoder import ClipDataset, clip_labels
from tests.helpers import demo_config, run_cli


def test_clip_labels_follow_the_centre_of_each_snippet():
    frames = np.array([[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]])  # 4 snippets at 4 fps
    # snippet centres: 0.5, 1.5, 2.5, 3.5 s
    labels = clip_labels(frames, 4.0, [(1.0, 2.6, 2), (3.6, 4.0, 1)])
    assert labels.tolist() == [-1, 2, 2, -1]


def _probe(encoder, dataset: ClipDataset, splits: int = 10) -> float:
    """Mean accuracy of a logistic regression fitted on half of the action clips and tested on the
    other half, over `splits` random halvings (one split of a few dozen clips ties too easily)."""
    feats, labels = [], []
    with torch.no_grad():
        encoder.eval()
        for clip in dataset.foreground:
            video, row = dataset.where[clip]
            snippet = torch.from_numpy(dataset.cache.read(dataset.videos[video], int(row)))
            feats.append(encoder(center_crop(snippet, dataset.crop)[None])[0])
            labels.append(int(dataset.labels[clip]))
    x, y = torch.stack(feats), torch.tensor(labels)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    accuracies = []
    for split in range(splits):
        fit = torch.randperm(len(y), generator=torch.Generator().manual_seed(split)) < len(y) // 2
        torch.manual_seed(split)
        probe = torch.nn.Linear(x.shape[1], len(dataset.classes))
        optimizer = torch.optim.Adam(probe.parameters(), lr=0.05)
        for _ in range(300):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(probe(x[fit]), y[fit]).backward()
            optimizer.step()
        accuracies.append(float((probe(x[~fit]).argmax(1) == y[~fit]).float().mean()))
    return sum(accuracies) / splits


@pytest.mark.slow
def test_a_trained_encoder_beats_a_random_one_and_loads_everywhere(tmp_path, synth_dir, feature_work):
    cache = {
        "snippets_dir": str(feature_work / "work" / "cache" / "snippets"),
        "features_dir": str(tmp_path / "features"),
    }
    training = {"subset": "training", "epochs": 3, "clips_per_epoch": 256, "lr": 3e-3, "lr_step": 3}
    config = demo_config(tmp_path, synth_dir, cache=cache, encoder_train=training)
    result = run_cli("train", "-c", config, "--encoder")
    assert result.returncode == 0, result.stderr
    checkpoint = tmp_path / "work" / "encoder" / "encoder_tsp.pth"
    written = checkpoint.stat().st_mtime_ns
    again = run_cli("train", "-c", config, "--encoder", "--resume")  # finished: nothing to redo
    assert again.returncode == 0 and checkpoint.stat().st_mtime_ns == written
    dataset = ClipDataset(load_settings(config, []), 40)
    torch.manual_seed(0)
    random_accuracy = _probe(build_encoder("tiny"), dataset)
    trained_accuracy = _probe(build_encoder("tiny", checkpoint), dataset)
    assert trained_accuracy > random_accuracy, (trained_accuracy, random_accuracy)
    # the checkpoint is what model.encoder.checkpoint reads: features, and end to end
    with_encoder = ["--set", f"model.encoder.checkpoint={checkpoint}"]
    done = run_cli("cache", "-c", config, "--what", "features", *with_encoder)
    assert done.returncode == 0, done.stderr
    assert any((tmp_path / "features").glob("*.h5"))
    done = run_cli("train", "-c", config, "--e2e", *with_encoder, "--set", "e2e.epochs=1")
    assert done.returncode == 0, done.stderr
    state = torch.load(tmp_path / "work" / "e2e" / "checkpoints" / "last.pt", weights_only=True)
    assert state["settings"]["model"]["encoder"]["checkpoint"] == str(checkpoint)
