"""The encoder registry: every entry builds, takes its clip shape, returns its width, honours
frozen_stages and norm_eval, and loads a checkpoint written in its native key layout; a clip
shape it cannot take is refused when the settings load; `etad encoders` lists them all."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from torch import nn

from stages.core.checkpoints import export_tsp
from stages.core.errors import UserError
from stages.model.encoder import ENCODERS, build_encoder, encoder_spec
from tests.helpers import run_cli

HAS_HF = importlib.util.find_spec("transformers") is not None
# the largest at their fixed 16 x 224 x 224: their code path is videomae_s's, their width is checked
# from the config instead of a forward pass (a ViT-L clip takes over a minute on 2 CPU cores)
NO_FORWARD = {"videomae_b", "videomae_l"}
# larger sizes of a builder whose smallest size runs every test below (the same stages, loader and
# code; building Swin3D-B alone takes 8 s here): the forward test builds and runs them
SHARED = NO_FORWARD | {"swin3d_s", "swin3d_b"}
OWN = [n for n in ENCODERS if n not in SHARED]


def _needs(name: str) -> None:
    if name.startswith("videomae") and not HAS_HF:
        pytest.skip("the hf extra (transformers) is not installed")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ENCODERS))
def test_each_encoder_takes_its_clip_shape_and_gives_its_width(name):
    _needs(name)
    spec = encoder_spec(name)
    torch.manual_seed(0)
    encoder = build_encoder(name, frozen_stages=-1).eval()
    frames, crop = spec.clip.example
    assert spec.clip.problem(frames, crop) is None
    if name in NO_FORWARD:
        assert encoder.backbone.model.config.hidden_size == spec.out_dim
        return
    with torch.no_grad():
        out = encoder(torch.randint(0, 255, (2, frames, crop, crop, 3), dtype=torch.uint8))
    assert out.shape == (2, spec.out_dim) and torch.isfinite(out).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", OWN)
def test_frozen_stages_and_norm_eval(name):
    _needs(name)
    spec = encoder_spec(name)
    stages = None
    for k in (-1, 0, spec.n_stages):
        encoder = build_encoder(name, frozen_stages=k, norm_eval=True)
        stages = spec.stages(encoder.backbone)
        assert len(stages) == spec.n_stages + 1  # the stem and the stages frozen_stages counts
        frozen = {id(p) for stage in stages[: k + 1] for m in stage for p in m.parameters()}
        for p in encoder.parameters():
            assert p.requires_grad == (id(p) not in frozen)
        encoder.train()
        for stage in stages[: k + 1]:
            assert all(not m.training for m in stage)
        batchnorms = [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        assert bool(batchnorms) == spec.batchnorm and all(not m.training for m in batchnorms)
    trainable = [p for stage in stages[1:] for m in stage for p in m.parameters()]
    assert trainable and all(p.requires_grad is False for p in trainable)  # k = n_stages: everything


def _native_file(name: str, path, reference: nn.Module):
    """The encoder's weights written as its own ecosystem writes them."""
    spec = encoder_spec(name)
    if "torchvision" in spec.formats and name != "r2plus1d_34_tsp":
        from torchvision.models import video

        full = getattr(video, name)(weights=None)  # with its classification head, as torchvision saves
        full.load_state_dict(reference.state_dict(), strict=False)
        torch.save(full.state_dict(), path)
        return path
    if "huggingface" in spec.formats:
        reference.model.save_pretrained(path)
        return path
    heads = nn.ModuleDict({"fc_action": nn.Linear(spec.out_dim, 3), "fc_region": nn.Linear(spec.out_dim, 2)})
    export_tsp(reference, heads, path)  # TSP's layout, with its pretraining heads
    return path


@pytest.mark.slow
@pytest.mark.parametrize("name", OWN)
def test_a_checkpoint_in_the_native_layout_round_trips(name, tmp_path):
    _needs(name)
    torch.manual_seed(1)
    reference = build_encoder(name).backbone
    path = _native_file(name, tmp_path / "weights", reference)
    torch.manual_seed(2)  # other random weights: everything must come from the file
    loaded = build_encoder(name, checkpoint=path).backbone
    for (key, a), b in zip(reference.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), key


def test_a_vit_block_fc_survives_and_a_file_of_another_encoder_is_refused(tmp_path):
    """Only the classification heads are dropped on loading (`mlp.fc1` of a transformer block is
    kept), and a file of another model is refused with the reason."""
    torch.manual_seed(0)
    swin = build_encoder("swin3d_t").backbone
    assert any(".mlp." in k for k in swin.state_dict())
    path = _native_file("swin3d_t", tmp_path / "swin.pth", swin)
    assert torch.equal(
        build_encoder("swin3d_t", checkpoint=path).backbone.state_dict()["norm.weight"],
        swin.state_dict()["norm.weight"],
    )
    with pytest.raises(UserError, match="keys do not match the encoder|another shape"):
        build_encoder("r3d_18", checkpoint=path)
    # the TSP layout `etad train --encoder` writes loads into a torchvision model too
    heads = nn.ModuleDict({"fc_action": nn.Linear(768, 3), "fc_region": nn.Linear(768, 2)})
    export_tsp(swin, heads, tmp_path / "tsp.pth")
    loaded = build_encoder("swin3d_t", checkpoint=tmp_path / "tsp.pth").backbone
    assert all(torch.equal(a, b) for a, b in zip(swin.state_dict().values(), loaded.state_dict().values()))


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            ["model.encoder.name=mvit_v2_s", "model.encoder.crop_size=224"],
            "mvit_v2_s takes clips of frames 16, crop 224; the settings give 8 frames (data.snippet_length)",
        ),
        (
            ["model.encoder.name=swin3d_t", "data.snippet_length=8", "model.encoder.crop_size=40"],
            "swin3d_t takes clips of frames >= 2, a multiple of 2, crop >= 32, a multiple of 32",
        ),
        (
            ["model.encoder.name=tiny", "model.encoder.frozen_stages=5"],
            "frozen_stages 5: expected -1 (none) to 3 (all) for tiny",
        ),
    ],
)
def test_a_clip_shape_the_encoder_cannot_take_is_refused_when_settings_load(
    tmp_path, synth_dir, sets, message
):
    from tests.helpers import demo_config

    config = demo_config(tmp_path, synth_dir)
    result = run_cli("config", "validate", config, *[x for s in sets for x in ("--set", s)])
    assert result.returncode == 2
    line = " ".join(result.stderr.split())
    assert message in line and "Traceback" not in line
    assert "got {" not in line  # the one line names the keys, without echoing the whole file


@pytest.mark.slow  # `etad` in a subprocess
def test_etad_encoders_lists_the_registry():
    result = run_cli("encoders", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert len(rows) >= 10 and [r["name"] for r in rows] == list(ENCODERS)
    by_name = {r["name"]: r for r in rows}
    assert by_name["r3d_18"]["width"] == 512 and by_name["r3d_18"]["parameters"] > 30e6
    assert by_name["mvit_v2_s"]["clip"] == "frames 16, crop 224" and by_name["s3d"]["stages"] == 3
    table = run_cli("encoders")
    assert table.returncode == 0 and "swin3d_b" in table.stdout


@pytest.mark.slow
@pytest.mark.parametrize(("name", "crop"), [("r3d_18", 16), ("videomae_tiny", 32)])  # small crops: CPU time
def test_one_epoch_end_to_end_with_a_torchvision_model_and_videomae(
    tmp_path, synth_dir, feature_work, name, crop
):
    """`etad train --e2e` (sampled backward) then `etad infer --eval` on the synthetic set."""
    _needs(name)
    from tests.helpers import demo_config

    cache = {"snippets_dir": str(feature_work / "work" / "cache" / "snippets")}
    config = demo_config(
        tmp_path, synth_dir, cache=cache, e2e={"epochs": 1, "encoder_lr": 1e-4}, model={"in_channels": None}
    )
    sets = ["--set", f"model.encoder.name={name}", "--set", f"model.encoder.crop_size={crop}"]
    result = run_cli("train", "-c", config, "--e2e", *sets)
    assert result.returncode == 0, result.stderr[-1500:]
    state = torch.load(tmp_path / "work" / "e2e" / "checkpoints" / "last.pt", weights_only=True)
    assert state["settings"]["model"]["encoder"]["name"] == name
    assert state["settings"]["model"]["in_channels"] == encoder_spec(name).out_dim
    assert all(torch.isfinite(v).all() for v in state["encoder"].values() if v.is_floating_point())
    result = run_cli(
        "infer",
        "-c",
        config,
        "--eval",
        *sets,
        "--checkpoint",
        tmp_path / "work" / "e2e" / "checkpoints" / "last.pt",
    )
    assert result.returncode == 0, result.stderr[-1500:]
    assert json.loads((tmp_path / "work" / "results" / "detections.json").read_text())["results"]
