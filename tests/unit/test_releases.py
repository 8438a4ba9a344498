"""Official V-JEPA 1 / 2 files: release table, head-count check, mask-token rule, leftover tables, and
their conversion to an HF folder (with the video processor's config)."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import logging
from pathlib import Path

import pytest
import torch

from helpers import load_tool, official_layout, require, tiny_config
from vjepa_scale.config import Config
from vjepa_scale.data.clips import IMAGENET_MEAN, IMAGENET_STD
from vjepa_scale.hf import export_to_hf
from vjepa_scale.models import JEPA
from vjepa_scale.models.pos_embed import sincos_3d
from vjepa_scale.weights import (RELEASES, CheckpointMismatchError, check_init_source, expected_shapes,
                                 load_init_state, official_config, read_official)

transformers = require("transformers")


def _release(file: str):
    return next(r for r in RELEASES if r.file == file)


def _release_file(path: Path, cfg: Config, num_mask_tokens: int, tables: bool) -> Path:
    """A file of a release's shapes: every weight a stride-0 view of one number (the file stays small),
    mask token i filled with i, sin-cos tables of the release's clip when `tables`."""
    shapes = expected_shapes(cfg)
    enc = {k: torch.full((), 0.01).expand(s) for k, s in shapes["encoder"].items()}
    pred = {k: torch.full((), 0.01).expand(s) for k, s in shapes["predictor"].items() if k != "mask_tokens"}
    W = cfg.model.pred_width
    pred["mask_tokens"] = torch.arange(num_mask_tokens, dtype=torch.float32)[:, None].expand(num_mask_tokens, W)
    enc, pred = official_layout(enc, pred)
    if tables:
        enc["module.backbone.pos_embed"] = sincos_3d(enc["module.backbone.norm.weight"].shape[0], cfg.grid)[None]
        pred["module.backbone.predictor_pos_embed"] = sincos_3d(W, cfg.grid)[None]
    torch.save({"encoder": enc, "predictor": pred, "target_encoder": enc, "epoch": 10}, path)
    return path


def test_release_table():
    by_file = {r.file: r for r in RELEASES}
    assert set(by_file) == {"vitl16.pth.tar", "vith16.pth.tar", "vith16-384.pth.tar",
                            "vitl.pt", "vith.pt", "vitg.pt", "vitg-384.pt"}
    g = by_file["vitg.pt"]
    assert g.dims == (1408, 40, 22, 48 / 11) and (g.pred_num_heads, g.num_mask_tokens) == (12, 10)
    assert by_file["vith16.pth.tar"].dims == (1280, 32, 16, 4.0) and by_file["vith16.pth.tar"].pred_num_heads == 16
    assert all(r.pos_embed == ("sincos" if r.family == "vjepa1" else "rope") for r in RELEASES)


def test_wrong_head_counts_are_refused_naming_both(tmp_path):
    vitg = _release("vitg.pt")
    path = _release_file(tmp_path / "vitg.pt", vitg.config(), 10, tables=False)
    cfg = official_config(path)  # the architecture from the release table
    assert (cfg.model.size, cfg.model.pred_num_heads, cfg.data.crop_size, cfg.data.frames_per_clip) == \
           ("giant_vjepa2", 12, 256, 64)
    assert official_config(path.rename(tmp_path / "vitg-384.pt")).data.crop_size == 384  # same shapes: by name
    path = tmp_path / "vitg-384.pt"
    state = load_init_state(path, cfg)
    assert state["encoder"]["transformer.blocks.39.attn.qkv.weight"].shape == (3 * 1408, 1408)

    v1_giant = official_config(path)
    v1_giant.model.size = "giant"  # V-JEPA 1's giant: same shapes, 16 heads
    with pytest.raises(CheckpointMismatchError, match=r"the encoder has 22 heads in V-JEPA 2 ViT-g/16@384 .* "
                                                      r"model.num_heads \(via model.size=giant\)=16; "
                                                      r"use model.size: giant_vjepa2"):
        load_init_state(path, v1_giant)
    pred16 = official_config(path)
    pred16.model.pred_num_heads = 16
    with pytest.raises(CheckpointMismatchError, match=r"the predictor has 12 heads in V-JEPA 2 ViT-g/16@384 .* "
                                                      r"model.pred_num_heads=16"):
        load_init_state(path, pred16)


def test_vjepa1_release_heads_and_mask_tokens(tmp_path):
    vitl = _release("vitl16.pth.tar")
    path = _release_file(tmp_path / "vitl16.pth.tar", vitl.config(), 2, tables=True)
    f = read_official(path)
    assert f.layout.family == "vjepa1" and f.release is vitl
    cfg = official_config(path)
    assert cfg.model.mask_tokens == "per_type"
    state = load_init_state(path, cfg)
    assert state["predictor"]["mask_tokens"][:, 0].tolist() == [0.0, 1.0]  # type m from token m
    shared = official_config(path)
    shared.model.mask_tokens = "shared"  # one token cannot hold what two learned: refused, also in pre-flight
    for check in (load_init_state, check_init_source):
        with pytest.raises(CheckpointMismatchError, match=r"predictor 'mask_tokens' holds 2 tokens, one per mask "
                                                          r"type .* model.mask_tokens=shared .* model.mask_tokens: "
                                                          r"per_type"):
            check(path, shared)
    cfg.model.num_heads = 8
    with pytest.raises(CheckpointMismatchError, match=r"the encoder has 16 heads in V-JEPA 1 ViT-L/16 .* "
                                                      r"model.num_heads=8"):
        load_init_state(path, cfg)


def test_vjepa2_release_with_position_tables(tmp_path, caplog):
    """A V-JEPA 2 release file that still carries sin-cos tables is V-JEPA 2 (10 mask tokens), not V-JEPA 1."""
    vitl = _release("vitl.pt")
    path = _release_file(tmp_path / "vitl.pt", vitl.config(), 10, tables=True)
    f = read_official(path)
    assert f.layout.family == "vjepa2" and f.layout.has_tables and f.release is vitl
    cfg = official_config(path)
    assert cfg.model.mask_tokens == "shared"  # V-JEPA 2 trains one token for both mask types
    with caplog.at_level(logging.INFO, logger="vjepa_scale.weights.load"):
        state = load_init_state(path, cfg)
    assert "ignoring the position tables it carries" in caplog.text
    assert "the shared mask token (model.mask_tokens: shared) starts from token 0" in caplog.text
    assert state["predictor"]["mask_tokens"].tolist() == [[0.0] * 384]
    cfg.model.mask_tokens = "per_type"
    with caplog.at_level(logging.INFO, logger="vjepa_scale.weights.load"):
        state = load_init_state(path, cfg)
    assert "all 2 mask types start from token 0" in caplog.text
    assert state["predictor"]["mask_tokens"].tolist() == [[0.0] * 384, [0.0] * 384]
    sincos = official_config(path)
    sincos.model.pos_embed = "sincos"
    with pytest.raises(CheckpointMismatchError, match="rope positions but the config has model.pos_embed=sincos"):
        load_init_state(path, sincos)


def test_vjepa2_mask_types_start_from_token_0(tmp_path):
    """Without tables (RoPE) every mask type starts from token 0; V-JEPA 1 (tables) keeps type m -> token m."""
    for pos_embed in ("rope", "sincos"):
        cfg = tiny_config(pos_embed, crop=64, frames=4)
        torch.manual_seed(0)
        model = JEPA(cfg)
        with torch.no_grad():
            model.predictor.mask_tokens.normal_()
        enc, pred = official_layout(model.encoder.state_dict(), model.predictor.state_dict())
        if pos_embed == "sincos":
            enc["module.backbone.pos_embed"] = sincos_3d(192, cfg.grid)[None]
            pred["module.backbone.predictor_pos_embed"] = sincos_3d(cfg.model.pred_width, cfg.grid)[None]
        torch.save({"encoder": enc, "predictor": pred}, tmp_path / "x.pt")
        got = load_init_state(tmp_path / "x.pt", cfg)["predictor"]["mask_tokens"]
        tokens = model.predictor.mask_tokens.detach()
        want = tokens[[0, 0]] if pos_embed == "rope" else tokens
        assert torch.equal(got, want), pos_embed


def _cli():
    return load_tool("convert_to_hf")


def test_convert_official_file_with_config(tmp_path, capsys):
    """One command from an official-layout file to a stock `VJEPA2Model` folder (architecture from --config)."""
    cfg = tiny_config("rope", crop=64, frames=4)
    torch.manual_seed(1)
    model = JEPA(cfg).eval()
    enc, pred = official_layout(model.encoder.state_dict(), model.predictor.state_dict())
    target = {k: v + 0.5 for k, v in enc.items()}
    torch.save({"encoder": enc, "predictor": pred, "target_encoder": target}, tmp_path / "run.pt")
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(json.dumps(cfg.to_dict()))  # JSON is YAML
    out = tmp_path / "hf"
    cli = _cli()
    assert cli.main([str(tmp_path / "run.pt"), str(tmp_path / "no"), "--include-predictor"]) == 2
    assert "no official release of these shapes" in capsys.readouterr().err
    assert cli.main([str(tmp_path / "run.pt"), str(out), "--include-predictor", "--config", str(recipe)]) == 0
    assert "target encoder + predictor" in capsys.readouterr().out
    hf = transformers.VJEPA2Model.from_pretrained(out).eval()
    video = torch.randn(2, 3, 4, 64, 64)
    with torch.no_grad():
        model.encoder.load_state_dict({k.replace("module.backbone.", ""): v for k, v in
                                       load_init_state(tmp_path / "run.pt", cfg)["target_encoder"].items()})
        ours = model.encoder(video)
        theirs = hf(video.permute(0, 2, 1, 3, 4), skip_predictor=True).last_hidden_state
    # fp32; the +0.5 target weights give activations of ~5, and our patch embedding (reshape + linear)
    # sums in another order than HF's Conv3d: compare relative to that scale
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=2e-3)
    fields = json.loads((out / "config.json").read_text())
    assert (fields["num_attention_heads"], fields["pred_num_attention_heads"]) == (3, 4)


def test_convert_online_of_a_target_only_file_is_refused(tmp_path, capsys):
    """A file holding only the EMA target encoder has no online one: `--which online` says so instead of
    exporting the target under the online label."""
    cfg = tiny_config("rope", crop=64, frames=4)
    model = JEPA(cfg).eval()
    enc, pred = official_layout(model.encoder.state_dict(), model.predictor.state_dict())
    torch.save({"target_encoder": enc, "predictor": pred}, tmp_path / "ema.pt")
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(json.dumps(cfg.to_dict()))
    cli = _cli()
    assert cli.main([str(tmp_path / "ema.pt"), str(tmp_path / "on"), "--which", "online", "--config", str(recipe)]) == 2
    assert "holds no online encoder (only the target encoder: drop --which online)" in capsys.readouterr().err
    assert not (tmp_path / "on").exists()
    assert cli.main([str(tmp_path / "ema.pt"), str(tmp_path / "tg"), "--config", str(recipe)]) == 0


@pytest.mark.slow
def test_convert_official_release_from_the_table(tmp_path, capsys):
    """A V-JEPA 2 ViT-L release file converts with no config: sizes, heads and clip come from the table."""
    path = _release_file(tmp_path / "vitl.pt", _release("vitl.pt").config(), 10, tables=True)
    out = tmp_path / "hf"
    assert _cli().main([str(path), str(out), "--dtype", "bfloat16", "--max-shard-size", "2GB"]) == 0
    assert "official release: encoder 1024/24, 16 heads; predictor 384/12, 12 heads" in capsys.readouterr().out
    fields = json.loads((out / "config.json").read_text())
    assert (fields["hidden_size"], fields["num_hidden_layers"], fields["num_attention_heads"]) == (1024, 24, 16)
    assert (fields["crop_size"], fields["frames_per_clip"], fields["model_type"]) == (256, 64, "vjepa2")
    assert (fields["pred_num_mask_tokens"], fields["pred_mask_tokens"]) == (1, "shared")  # token 0 of the 10
    proc = json.loads((out / "video_preprocessor_config.json").read_text())
    assert proc["crop_size"] == {"height": 256, "width": 256} and proc["num_frames"] == 64


def _vjepa2_processor_available() -> bool:
    from transformers.utils import is_torchvision_available

    if not is_torchvision_available():  # the processor needs torchvision (a CUDA build needs CUDA torch)
        return False
    try:
        import transformers.models.vjepa2.video_processing_vjepa2  # noqa: F401
        return True
    except Exception:
        return False


def test_export_writes_the_video_processor_config(tmp_path):
    cfg = tiny_config("rope", crop=64, frames=4)
    model = JEPA(cfg)
    out = export_to_hf(cfg, model.encoder.state_dict(), tmp_path / "hf")
    from transformers.models.auto.video_processing_auto import get_video_processor_config

    fields = get_video_processor_config(out)  # the file AutoVideoProcessor reads
    assert fields["video_processor_type"] == "VJEPA2VideoProcessor"
    assert fields["crop_size"] == {"height": 64, "width": 64} and fields["num_frames"] == 4
    assert fields["image_mean"] == list(IMAGENET_MEAN) and fields["image_std"] == list(IMAGENET_STD)
    assert fields["do_rescale"] and fields["rescale_factor"] == 1 / 255 and fields["do_normalize"]


# torchvision is not a dev extra: PyPI has no build for the pinned CPU torch (constraints.txt, 2.13.0+cpu);
# its torchvision 0.28.0 (the release for torch 2.13) is built against CUDA torch and fails to import beside
# it ("operator torchvision::nms does not exist"). With a torchvision that fits the installed torch, this runs.
@pytest.mark.skipif(not _vjepa2_processor_available(),
                    reason="transformers' VJEPA2VideoProcessor needs a torchvision that imports with this torch; "
                           "none is on PyPI for the pinned CPU torch, so it is not a dev extra")
def test_video_processor_reads_the_export(tmp_path):
    """AutoVideoProcessor on an export: the processor type, clip shape and normalization it applies."""
    cfg = tiny_config("rope", crop=64, frames=4)
    out = export_to_hf(cfg, JEPA(cfg).encoder.state_dict(), tmp_path / "hf")
    proc = transformers.AutoVideoProcessor.from_pretrained(out)
    assert type(proc).__name__ == "VJEPA2VideoProcessor"
    color = torch.tensor([10, 128, 250], dtype=torch.uint8)
    video = color.view(1, 1, 1, 3).expand(4, 90, 120, 3).contiguous()  # (T, H, W, C), one colour
    x = proc(video, return_tensors="pt")["pixel_values_videos"]
    assert x.shape == (1, 4, 3, 64, 64)  # (B, T, C, H, W): what VJEPA2Model takes
    want = (color.float() / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(x[0, :, :, 10, 10], want.expand(4, 3), atol=1e-5)


def test_classification_fine_tuning_loads_a_rope_export(tmp_path):
    """README's fine-tuning path: only the pooler and the classifier are new; the encoder loads whole."""
    cfg = tiny_config("rope", crop=64, frames=4)
    model = JEPA(cfg)
    out = export_to_hf(cfg, model.encoder.state_dict(), tmp_path / "hf", model.predictor.state_dict())
    clf, info = transformers.VJEPA2ForVideoClassification.from_pretrained(out, num_labels=5,
                                                                          output_loading_info=True)
    assert info["missing_keys"] and all(k.startswith(("pooler.", "classifier.")) for k in info["missing_keys"])
    assert not info["mismatched_keys"]
    assert all(k.startswith("predictor.") for k in info["unexpected_keys"])  # the classifier has no predictor
    w = model.encoder.transformer.blocks[1].mlp.fc2.weight
    assert torch.equal(clf.vjepa2.encoder.layer[1].mlp.fc2.weight, w)
    with torch.no_grad():
        logits = clf(pixel_values_videos=torch.randn(2, 4, 3, 64, 64)).logits
    assert logits.shape == (2, 5)


def test_convert_refuses_a_non_checkpoint_and_a_full_out_dir_first(tmp_path, capsys):
    """A file that is no checkpoint is named (exit 2, no traceback); a non-empty OUT_DIR is refused before
    the source is read."""
    (tmp_path / "notes.pt").write_text("not weights\n")
    cli = _cli()
    assert cli.main([str(tmp_path / "notes.pt"), str(tmp_path / "out")]) == 2
    assert "notes.pt: not a torch checkpoint file (unknown format)" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("")
    assert cli.main([str(tmp_path / "notes.pt"), str(tmp_path / "full")]) == 2
    assert "full is not empty; pass overwrite=True (--overwrite)" in capsys.readouterr().err
