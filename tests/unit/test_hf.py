"""HF export (stock `vjepa2` and the sin-cos remote-code model) and pretrained-weight import."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json

import pytest
import torch

from helpers import official_layout, require, tiny_config
from vjepa_scale.config import ConfigError
from vjepa_scale.hf import export_to_hf
from vjepa_scale.masks import pack_masks
from vjepa_scale.models import JEPA
from vjepa_scale.models.pos_embed import sincos_3d
from vjepa_scale.models.vit import Packed
from vjepa_scale.weights import (CheckpointMismatchError, check_hf_fields, config_from_hf_fields, config_to_hf_fields,
                                 load_init_state, read_hf_config)

transformers = require("transformers")

B, FRAMES, CROP = 2, 4, 64  # grid (2, 4, 4): 32 tokens


def _model(pos_embed: str, seed: int = 0, **kw):
    """A tiny JEPA whose every weight (LN, biases, mask tokens too) is perturbed away from its init."""
    torch.manual_seed(seed)
    cfg = tiny_config(pos_embed, batch_size=B, crop=CROP, frames=FRAMES, **kw)
    model = JEPA(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return cfg, model


def _splits(cfg, seed: int):
    """Per mask type and sample: (context ids, target ids), 20 / 12 of 32 tokens, interleaved in position."""
    g = torch.Generator().manual_seed(seed)
    N = cfg.grid[0] * cfg.grid[1] * cfg.grid[2]
    ctx, tgt = [], []
    for _ in cfg.mask.types:
        perms = [torch.randperm(N, generator=g) for _ in range(B)]
        ctx.append([p[:20].sort().values for p in perms])
        tgt.append([p[20:].sort().values for p in perms])
    return ctx, tgt


def _ours(model, cfg, video, ctx, tgt):
    """Our encoder on the full clip; our predictor on its outputs at the context -> per type (B, 12, D)."""
    masks = pack_masks(ctx, tgt, cfg.grid)
    with torch.no_grad():
        h = model.encoder(video)
        pred = model.predictor(h.flatten(0, 1)[masks.ctx_idx], masks)
    b = masks.tgt_type_bounds
    return h, [pred[b[m]:b[m + 1]].reshape(B, -1, h.shape[-1]) for m in range(len(ctx))]


def _assert_hf_outputs(hf, model, cfg, seed: int, encoder: bool = True) -> None:
    """The HF model's predictor outputs (and, with `encoder`, its encoder's) equal ours for every mask type
    (`mask_index` m), on `_splits(cfg, seed)`."""
    video = _video()
    ctx, tgt = _splits(cfg, seed)
    h, preds = _ours(model, cfg, video, ctx, tgt)
    for m in range(len(ctx)):
        with torch.no_grad():
            o = hf(video.permute(0, 2, 1, 3, 4), context_mask=[torch.stack(ctx[m])],
                   target_mask=[torch.stack(tgt[m])], mask_index=m)
        if encoder:
            assert (o.last_hidden_state - h).abs().max() <= 1e-4
        assert (o.predictor_output.last_hidden_state - preds[m]).abs().max() <= 1e-4


def _video():
    torch.manual_seed(123)
    return torch.randn(B, 3, FRAMES, CROP, CROP)


def _loaded_cleanly(info):
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info


def test_rope_export_matches_stock_vjepa2(tmp_path):
    cfg, model = _model("rope")
    out = export_to_hf(cfg, model.encoder.state_dict(), tmp_path / "hf", model.predictor.state_dict(),
                       step=1234, max_shard_size="300KB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # sharded above the size limit
    hf, info = transformers.VJEPA2Model.from_pretrained(out, output_loading_info=True)
    _loaded_cleanly(info)
    hf.eval()
    video = _video()
    ctx, tgt = _splits(cfg, 0)
    h, preds = _ours(model, cfg, video, ctx, tgt)
    # The stock model always predicts with mask token 1 (mask type 1 here).
    cm, tm = torch.stack(ctx[1]), torch.stack(tgt[1])
    with torch.no_grad():
        o = hf(video.permute(0, 2, 1, 3, 4), context_mask=[cm], target_mask=[tm])
    assert (o.last_hidden_state - h).abs().max() <= 1e-4
    assert (o.predictor_output.last_hidden_state - preds[1]).abs().max() <= 1e-4
    card = (out / "README.md").read_text()
    assert "1234" in card and "VJEPA2Model.from_pretrained" in card and "pos_embed: rope" in card


def test_sincos_export_matches_remote_code_model(tmp_path):
    cfg, model = _model("sincos")
    out = export_to_hf(cfg, model.encoder.state_dict(), tmp_path / "hf", model.predictor.state_dict(), step=5)
    assert (out / "model.safetensors").is_file() and (out / "modeling_vjepa_sincos.py").is_file()
    hf, info = transformers.AutoModel.from_pretrained(out, trust_remote_code=True, output_loading_info=True)
    _loaded_cleanly(info)
    hf.eval()
    assert type(hf).__name__ == "VJEPASinCosModel"
    _assert_hf_outputs(hf, model, cfg, seed=1)
    # The remote-code weights use the vjepa2 names: the stock model loads them all (only positions differ).
    _, info = transformers.VJEPA2Model.from_pretrained(out, output_loading_info=True)
    _loaded_cleanly(info)


@pytest.mark.parametrize("pos_embed", ["rope", "sincos"])
def test_hf_folder_round_trip_is_exact(tmp_path, pos_embed):
    cfg, model = _model(pos_embed)
    out = export_to_hf(cfg, model.encoder.state_dict(), tmp_path / "hf", model.predictor.state_dict(),
                       max_shard_size="300KB")
    state = load_init_state(out, cfg)
    assert state["target_encoder"] is None
    for name in ("encoder", "predictor"):
        ref = getattr(model, name).state_dict()
        assert state[name].keys() == ref.keys()
        assert all(torch.equal(state[name][k], ref[k]) for k in ref)
    # Encoder-only export: no predictor comes back.
    enc_only = export_to_hf(cfg, model.encoder.state_dict(), tmp_path / "enc")
    assert load_init_state(enc_only, cfg)["predictor"] is None
    assert "no predictor weights" in (enc_only / "README.md").read_text()


def test_hf_classification_folder_imports_its_encoder(tmp_path):
    """A `VJEPA2ForVideoClassification` fine-tuned from our export: the head is ignored, the encoder comes back."""
    cfg, model = _model("rope")
    out = export_to_hf(cfg, model.encoder.state_dict(), tmp_path / "hf", model.predictor.state_dict())
    clf = transformers.VJEPA2ForVideoClassification.from_pretrained(out, num_labels=3)
    clf.save_pretrained(tmp_path / "clf")
    state = load_init_state(tmp_path / "clf", cfg)
    assert all(torch.equal(state["encoder"][k], v) for k, v in model.encoder.state_dict().items())


def test_pickled_objects_are_refused(tmp_path):
    cfg, _ = _model("rope")
    torch.save({"encoder": {}, "extra": _Opaque()}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="objects other than tensors"):
        load_init_state(tmp_path / "x.pt", cfg)


class _Opaque:
    pass


def _assert_same_outputs(cfg, model, state):
    fresh = JEPA(cfg).eval()  # different init; everything must come from the checkpoint
    fresh.encoder.load_state_dict(state["encoder"])
    fresh.predictor.load_state_dict(state["predictor"])
    video = _video()
    ctx, tgt = _splits(cfg, 2)
    masks = pack_masks(ctx, tgt, cfg.grid)
    packed = Packed(masks.ctx_cu_seqlens, masks.ctx_max_seqlen, masks.ctx_token_ids)
    with torch.no_grad():
        ours, loaded = [(net.encoder(video), net.predictor(net.encoder(video, masks.ctx_idx, packed), masks))
                        for net in (model, fresh)]
    assert torch.equal(ours[0], loaded[0]) and torch.equal(ours[1], loaded[1])  # full clip; packed predictor


def test_official_vjepa1_checkpoint_reproduces_outputs(tmp_path):
    cfg, model = _model("sincos")
    enc, pred = official_layout(model.encoder.state_dict(), model.predictor.state_dict(),
                               sincos_3d(192, cfg.grid), sincos_3d(cfg.model.pred_width, cfg.grid))
    target = {k: v + 1.0 for k, v in enc.items() if not k.endswith("pos_embed")}
    target["module.backbone.pos_embed"] = enc["module.backbone.pos_embed"]
    path = tmp_path / "vjepa1.pth.tar"
    torch.save({"encoder": enc, "predictor": pred, "target_encoder": target, "epoch": 3, "opt": {}, "lr": 1e-3},
               path)
    state = load_init_state(path, cfg)
    _assert_same_outputs(cfg, model, state)
    assert torch.equal(state["target_encoder"]["transformer.norm.weight"], model.encoder.transformer.norm.weight + 1)


def test_official_vjepa2_checkpoint_with_ten_mask_tokens(tmp_path):
    cfg, model = _model("rope")
    enc, pred = official_layout(model.encoder.state_dict(), model.predictor.state_dict())
    for i in range(2, 10):  # the release predictors carry 10 mask tokens; every type starts from token 0
        pred[f"module.backbone.mask_tokens.{i}"] = torch.full((1, 1, cfg.model.pred_width), float(i))
    path = tmp_path / "vjepa2.pt"
    torch.save({"encoder": enc, "predictor": pred, "epoch": 1}, path)
    state = load_init_state(path, cfg)
    assert state["target_encoder"] is None
    with torch.no_grad():
        model.predictor.mask_tokens[1] = model.predictor.mask_tokens[0]
    _assert_same_outputs(cfg, model, state)


def test_official_vjepa2_checkpoint_into_a_shared_mask_token(tmp_path):
    """model.mask_tokens=shared: a V-JEPA 2 file's token 0 (of its 10) is the one token; outputs reproduce."""
    cfg, model = _model("rope", mask_tokens="shared")
    enc, pred = official_layout(model.encoder.state_dict(), model.predictor.state_dict())
    for i in range(1, 10):
        pred[f"module.backbone.mask_tokens.{i}"] = torch.full((1, 1, cfg.model.pred_width), float(i))
    path = tmp_path / "vjepa2.pt"
    torch.save({"encoder": enc, "predictor": pred, "epoch": 1}, path)
    state = load_init_state(path, cfg)
    assert tuple(state["predictor"]["mask_tokens"].shape) == (1, cfg.model.pred_width)
    _assert_same_outputs(cfg, model, state)


def test_shared_mask_token_export_round_trips(tmp_path):
    """A shared model exports one token (`pred_num_mask_tokens: 1`, `pred_mask_tokens: shared`), which the stock
    VJEPA2Model loads and predicts with for every mask type; it reads back as shared, and per_type <-> shared
    imports are refused naming model.mask_tokens."""
    cfg, model = _model("rope", mask_tokens="shared")
    out = export_to_hf(cfg, model.encoder.state_dict(), tmp_path / "hf", model.predictor.state_dict())
    written = read_hf_config(out)
    assert (written["pred_num_mask_tokens"], written["pred_mask_tokens"]) == (1, "shared")
    back = config_from_hf_fields(written)
    assert back.model.mask_tokens == "shared" and config_to_hf_fields(back) == config_to_hf_fields(cfg)
    assert "one mask token, shared by every mask type" in (out / "README.md").read_text()
    hf, info = transformers.VJEPA2Model.from_pretrained(out, output_loading_info=True)
    _loaded_cleanly(info)
    hf.eval()
    _assert_hf_outputs(hf, model, cfg, seed=3, encoder=False)
    state = load_init_state(out, cfg)
    assert all(torch.equal(state["predictor"][k], v) for k, v in model.predictor.state_dict().items())

    per_type, per_type_model = _model("rope")
    with pytest.raises(CheckpointMismatchError, match=r"config.json: pred_mask_tokens='shared' but the config has "
                                                      r"model.mask_tokens='per_type'"):
        load_init_state(out, per_type)
    old = export_to_hf(per_type, per_type_model.encoder.state_dict(), tmp_path / "old",
                       per_type_model.predictor.state_dict())
    with pytest.raises(CheckpointMismatchError, match=r"config.json: pred_mask_tokens='per_type' but the config has "
                                                      r"model.mask_tokens='shared'"):
        load_init_state(old, cfg)
    fields = read_hf_config(old)
    del fields["pred_mask_tokens"]  # an export from before the key: its two tokens are per type
    (old / "config.json").write_text(json.dumps(fields))
    assert config_from_hf_fields(fields).model.mask_tokens == "per_type"
    with pytest.raises(CheckpointMismatchError, match=r"'mask_tokens' holds 2 tokens, one per mask type .* "
                                                      r"model.mask_tokens: per_type"):
        load_init_state(old, cfg)
    assert config_from_hf_fields({**fields, "pred_num_mask_tokens": 10}).model.mask_tokens == "shared"  # V-JEPA 2


def test_hf_config_map_round_trips(tmp_path):
    """One Config <-> config.json map: export writes it, eval reads a Config back, import checks with it."""
    cfg = tiny_config("rope", batch_size=B, crop=CROP, frames=FRAMES, num_heads=6, mlp_ratio=3.0)
    fields = config_to_hf_fields(cfg)
    back = config_from_hf_fields({"model_type": "vjepa2", **fields})
    assert config_to_hf_fields(back) == fields
    assert back.model.pos_embed == "rope" and back.grid == cfg.grid and len(back.mask.types) == len(cfg.mask.types)

    sincos, model = _model("sincos")
    out = export_to_hf(sincos, model.encoder.state_dict(), tmp_path / "hf", model.predictor.state_dict())
    written = read_hf_config(out)
    assert written["model_type"] == "vjepa_sincos"
    assert {k: written.get(k) for k in fields} == config_to_hf_fields(sincos)
    assert config_from_hf_fields(written).model.pos_embed == "sincos"
    check_hf_fields(written, sincos, "hf", has_predictor=True)
    with pytest.raises(CheckpointMismatchError, match=r"hf: num_attention_heads=3 but the config has "
                                                      r"model.num_heads=6$"):  # set directly, not via model.size
        check_hf_fields(written, tiny_config("sincos", crop=CROP, frames=FRAMES, num_heads=6), "hf", True)
    with pytest.raises(ConfigError, match=r"x.json: model_type 'bert' is not a V-JEPA export"):
        config_from_hf_fields({**written, "model_type": "bert"}, "x.json")
    with pytest.raises(ConfigError, match=r"x.json has no field 'hidden_size'"):
        config_from_hf_fields({k: v for k, v in written.items() if k != "hidden_size"}, "x.json")
    with pytest.raises(ConfigError, match="not a Hugging Face export"):
        read_hf_config(tmp_path)


def test_hf_config_reads_back_the_named_size():
    """An export's dims map back to the VIT_SIZES name they match (the two giants differ only in heads);
    other dims read back as size `custom` with the dims given, which builds the same model."""
    from vjepa_scale.config import VIT_SIZES, ModelConfig, resolve_vit_size

    for name in VIT_SIZES:
        cfg = tiny_config("rope", crop=CROP, frames=FRAMES)
        cfg.model = ModelConfig(size=name, pos_embed="rope")
        back = config_from_hf_fields({"model_type": "vjepa2", **config_to_hf_fields(cfg)})
        assert back.model.size == name and back.model.width is None and back.model.num_heads is None
    cfg = tiny_config("sincos", crop=CROP, frames=FRAMES, num_heads=6)  # tiny at depth 2, 6 heads: no named size
    fields = config_to_hf_fields(cfg)
    back = config_from_hf_fields({"model_type": "vjepa_sincos", **fields})
    assert back.model.size == "custom" and config_to_hf_fields(back) == fields
    assert resolve_vit_size(back.model) == resolve_vit_size(cfg.model)
    with pytest.raises(ConfigError, match=r"model.size=custom needs model.depth, model.mlp_ratio"):
        ModelConfig(size="custom", width=96, num_heads=3).validate()


def test_shape_mismatch_names_key_and_both_shapes(tmp_path):
    cfg, model = _model("rope")
    out = export_to_hf(cfg, model.encoder.state_dict(), tmp_path / "hf", model.predictor.state_dict())
    wider, _ = _model("rope", pred_width=96)
    with pytest.raises(CheckpointMismatchError, match=r"config.json: pred_hidden_size=64 .*model.pred_width=96"):
        load_init_state(out, wider)
    enc, pred = official_layout(model.encoder.state_dict(), model.predictor.state_dict())
    path = tmp_path / "vjepa2.pt"
    torch.save({"encoder": enc, "predictor": pred}, path)
    with pytest.raises(CheckpointMismatchError,
                       match=r"predictor parameter 'embed.weight' has shape \(64, 192\) .* but \(96, 192\)"):
        load_init_state(path, wider)
    small, _ = _model("rope", size="small")
    with pytest.raises(CheckpointMismatchError, match=r"encoder parameter 'patch_embed.bias' has shape \(192,\) "
                                                      r"in the checkpoint but \(384,\)"):
        load_init_state(path, small)
    deeper, _ = _model("rope", depth=3)
    with pytest.raises(CheckpointMismatchError, match=r"missing from the checkpoint: \['transformer.blocks.2"):
        load_init_state(path, deeper)
    heads, _ = _model("rope", num_heads=6)  # same shapes, different attention: only config.json tells
    with pytest.raises(CheckpointMismatchError, match="num_attention_heads=3"):
        load_init_state(out, heads)


def test_position_scheme_and_table_checks(tmp_path):
    cfg, model = _model("sincos")
    rope_cfg, _ = _model("rope")
    table = sincos_3d(192, cfg.grid)
    enc, pred = official_layout(model.encoder.state_dict(), model.predictor.state_dict(), table,
                               sincos_3d(cfg.model.pred_width, cfg.grid))
    path = tmp_path / "v1.pt"
    torch.save({"encoder": enc, "predictor": pred}, path)
    with pytest.raises(CheckpointMismatchError, match="sincos positions but the config has model.pos_embed=rope"):
        load_init_state(path, rope_cfg)
    # The reference's uniform_power=False table gives time half the channels: refused, not silently used.
    enc["module.backbone.pos_embed"] = torch.roll(table, 8, dims=1)[None]
    torch.save({"encoder": enc, "predictor": pred}, path)
    with pytest.raises(CheckpointMismatchError, match="differs from our 3D sin-cos table"):
        load_init_state(path, cfg)
    out = export_to_hf(cfg, model.encoder.state_dict(), tmp_path / "hf")
    with pytest.raises(CheckpointMismatchError, match="vjepa_sincos.*model.pos_embed=rope"):
        load_init_state(out, rope_cfg)


def test_export_refuses_non_empty_folder_and_bad_input(tmp_path):
    cfg, model = _model("rope")
    out = export_to_hf(cfg, model.encoder.state_dict(), tmp_path / "hf", max_shard_size="300KB")
    with pytest.raises(FileExistsError, match="not empty"):
        export_to_hf(cfg, model.encoder.state_dict(), out)
    export_to_hf(cfg, model.encoder.state_dict(), out, overwrite=True)  # single file now; old shards removed
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors",
                                                     "video_preprocessor_config.json"]
    half = export_to_hf(cfg, model.encoder.state_dict(), tmp_path / "bf16", dtype=torch.bfloat16)
    assert json.loads((half / "config.json").read_text())["dtype"] == "bfloat16"
    state = load_init_state(half, cfg)
    assert state["encoder"]["patch_embed.weight"].dtype == torch.bfloat16
    assert torch.equal(state["encoder"]["patch_embed.weight"], model.encoder.patch_embed.weight.bfloat16())
    with pytest.raises(FileNotFoundError, match="neither a Hugging Face export"):
        load_init_state(tmp_path / "bf16" / "..", cfg)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_init_state(tmp_path / "nowhere", cfg)
    torch.save({"weights": {}}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not an official V-JEPA checkpoint"):
        load_init_state(tmp_path / "x.pt", cfg)


def test_bad_init_from_is_refused_before_training_naming_the_file(tmp_path):
    """A folder that is no run, a file that is no checkpoint, an HF export of another depth and an official
    file of another depth (stated only by its tensors) fail the pre-flight checks, naming the file and what
    was expected."""
    from vjepa_scale.train.launch import preflight

    cfg, model = _model("rope")
    export_to_hf(cfg, model.encoder.state_dict(), tmp_path / "hf", model.predictor.state_dict())
    (tmp_path / "notrun").mkdir()
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "text.pt").write_text("weights\n")
    enc, pred = official_layout(model.encoder.state_dict(), model.predictor.state_dict())
    torch.save({"encoder": enc, "predictor": pred}, tmp_path / "v2.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "v2.pt").read_bytes()[:300])
    expected = "expected an official V-JEPA `torch.save` file"
    cases = [("notrun", {}, r"notrun: neither a Hugging Face export \(no config.json\) nor a training run"),
             ("empty.pt", {}, r"empty\.pt: not a torch checkpoint file \(empty\); " + expected),
             ("text.pt", {}, r"text\.pt: not a torch checkpoint file \(unknown format\); " + expected),
             ("cut.pt", {}, r"cut\.pt: cannot be read as a torch checkpoint \(RuntimeError: .*\); " + expected),
             ("hf", {"depth": 3}, r"hf/config\.json: num_hidden_layers=2 but the config has model\.depth=3$"),
             ("hf", {"depth": None}, r"num_hidden_layers=2 but the config has model\.depth \(via model\.size=tiny\)=12")]
    for name, model_kw, message in cases:
        c, _ = _model("rope", **model_kw)
        c.train.init_from = str(tmp_path / name)
        with pytest.raises(ConfigError, match=r"^train\.init_from: .*" + message):
            preflight(c, 1)
    same, _ = _model("rope")
    same.train.init_from = str(tmp_path / "v2.pt")
    preflight(same, 1)
    deeper, _ = _model("rope", depth=3)
    deeper.train.init_from = str(tmp_path / "v2.pt")
    with pytest.raises(ConfigError, match=r"^train\.init_from: .*v2\.pt: .*missing from the checkpoint"):
        preflight(deeper, 1)


@pytest.mark.parametrize("shard", ["5GB", "300KB"])
def test_exported_files_get_the_umask_mode(tmp_path, shard):
    """The weights too (huggingface_hub writes them through a 0600 temp file)."""
    cfg, model = _model("sincos")
    old = os.umask(0o027)
    try:
        out = export_to_hf(cfg, model.encoder.state_dict(), tmp_path / "hf", max_shard_size=shard)
    finally:
        os.umask(old)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in out.iterdir()}
    assert any(n.endswith(".safetensors") for n in modes) and set(modes.values()) == {"0o640"}, modes


def test_phased_export_describes_the_last_phase_and_the_real_schedules(tmp_path):
    """A phased run's preprocessor config and card give the clip of the phase that trained the exported step
    (the last phase when the step is unknown), the card lists every phase, and it names the run's LR / WD /
    EMA schedules (not always cosine)."""
    from vjepa_scale.config import load_config

    cfg = load_config("cpu_demo", ["model.pos_embed=rope", "optim.iterations=40", "optim.lr_schedule=wsd",
                                   "optim.cooldown=10", "optim.warmup=5", "optim.wd_schedule=constant",
                                   "phases=[{name: pretrain, steps: 30, crop_size: 64, frames_per_clip: 4}, "
                                   "{name: cool, crop_size: 96, frames_per_clip: 8, global_batch_size: 6, "
                                   "optim: {warmup: 0, cooldown: 12}}]"])
    model = JEPA(cfg.phase_configs()[0])
    out = export_to_hf(cfg, model.encoder.state_dict(), tmp_path / "hf")
    proc = json.loads((out / "video_preprocessor_config.json").read_text())
    assert proc["num_frames"] == 8 and proc["crop_size"] == {"height": 96, "width": 96}, proc
    card = (out / "README.md").read_text()
    assert "# 8 frames, 96 px crop" in card and "8 frames, frame step" in card and "crop 96 (the last phase)" in card
    assert "cosine" not in card.split("## Training recipe")[1].split("<details>")[0]
    assert "| 0 (pretrain) | 30 | 4 frames, crop 64 |" in card
    assert "| 1 (cool) | 10 | 8 frames, crop 96 | 6 clips |" in card
    assert "8 frames, frame step 4, crop 96" in card
    cfg.data.fps, cfg.data.short_videos = 4.0, "pad"  # V-JEPA 2's sampling: the card must not name frame_step
    cfg.data.frame_spacing = "linspace"
    card = (export_to_hf(cfg, model.encoder.state_dict(), tmp_path / "hf_fps") / "README.md").read_text()
    assert ("8 frames, sampled at 4 fps (per video, frame step max(1, ceil(video fps) // 4)), 8 frames spread over "
            "8 steps as the reference repos do, videos shorter than a clip padded with their last frame, crop 96") in card
    assert "over the horizon's last 12 steps (`wsd`, 12-step horizon); WD" in card  # the cooldown phase's own piece
    assert "over 5 warmup steps" in card and "WD 0.04 (constant)" in card
    # a checkpoint from before the cooldown was trained only at the first phase's clip
    mid = export_to_hf(cfg, model.encoder.state_dict(), tmp_path / "mid", step=30)
    proc = json.loads((mid / "video_preprocessor_config.json").read_text())
    assert proc["num_frames"] == 4 and proc["crop_size"] == {"height": 64, "width": 64}, proc
    assert "crop 64 (phase 0, which trained step 30)" in (mid / "README.md").read_text()
    late = export_to_hf(cfg, model.encoder.state_dict(), tmp_path / "late", step=31)
    assert json.loads((late / "video_preprocessor_config.json").read_text())["num_frames"] == 8
    # the stock VJEPA2Model numbers RoPE positions on config.json's crop grid: at the processor's clip it must
    # give our features (sharp attention, qkv x 15, so wrong positions show)
    sharp = {k: v * 15 if ".qkv." in k else v for k, v in model.encoder.state_dict().items()}
    for folder, step, (frames, crop) in (("hf_sharp", None, (8, 96)), ("mid_sharp", 30, (4, 64))):
        out = export_to_hf(cfg, sharp, tmp_path / folder, step=step)
        fields = json.loads((out / "config.json").read_text())
        assert (fields["frames_per_clip"], fields["crop_size"]) == (frames, crop)
        model.encoder.load_state_dict(sharp)
        torch.manual_seed(0)
        video = torch.randn(1, 3, frames, crop, crop)
        hf = transformers.VJEPA2Model.from_pretrained(out).eval()
        with torch.no_grad():
            ours, theirs = model.encoder(video), hf(video.permute(0, 2, 1, 3, 4), skip_predictor=True).last_hidden_state
        assert (ours - theirs).abs().max() <= 1e-4 * ours.abs().max(), folder

    plain = load_config("cpu_demo", ["optim.lr_schedule=wsd", "optim.cooldown=10"])
    card = export_to_hf(plain, JEPA(plain).encoder.state_dict(), tmp_path / "plain").joinpath("README.md").read_text()
    assert "linear toward" in card and "(`wsd`," in card and "cosine toward" not in card and "Phases" not in card
