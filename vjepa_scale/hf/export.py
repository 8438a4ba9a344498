"""Write our encoder (and optionally predictor) as a Hugging Face model folder.

RoPE models export to the stock `transformers` `VJEPA2Model` (`model_type: vjepa2`). Sin-cos
(V-JEPA 1) models, which `vjepa2` cannot represent, export with `modeling_vjepa_sincos.py` copied
into the folder and registered in `config.json` for `AutoModel` with `trust_remote_code=True`; both
use the `vjepa2` parameter names. Weights go to safetensors, sharded with an index above
`max_shard_size`; a model card (README.md) records the recipe and the training step, and
`video_preprocessor_config.json` the run's preprocessing for `transformers.AutoVideoProcessor`
(the stock `VJEPA2VideoProcessor`: resize, centre crop to the run's crop size, ImageNet mean/std).
A run of several `phases` is described by the clip shape of the phase that trained the exported step
(the last phase when the step is unknown); the card lists every phase with its own batch and
schedules. `config.json`'s crop_size / frames_per_clip: for RoPE, that phase's clip too (the stock
`VJEPA2Model` numbers its RoPE positions on config.crop_size's grid, so it is right only for clips of
that crop); for sin-cos, `data`'s, the grid its position table is built at (the remote code
interpolates it to the input's size).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Optional

import torch
import yaml

from vjepa_scale.config import DEFAULT_BATCH_SIZE, Config, DataConfig, OptimConfig, resolve_vit_size
from vjepa_scale.weights import keys
from vjepa_scale.weights.checks import check_state_dict, expected_shapes
from vjepa_scale.weights.hf_config import config_to_hf_fields

StateDict = dict[str, torch.Tensor]
REMOTE_CODE = Path(__file__).with_name("modeling_vjepa_sincos.py")
VIDEO_PROCESSOR_FILE = "video_preprocessor_config.json"  # what AutoVideoProcessor.from_pretrained reads
_OUR_FILES = ("config.json", "README.md", "model.safetensors", "model.safetensors.index.json", REMOTE_CODE.name,
              VIDEO_PROCESSOR_FILE)


def trained_phase(cfg: Config, step: Optional[int]) -> tuple[int, Config]:
    """(index, config) of the phase that trained the checkpoint of optimizer step `step` (its last
    step); the last phase when `step` is unknown. Without `phases`: (0, cfg)."""
    from vjepa_scale.train.phases import phase_at, plan

    phases = plan(cfg)
    p = phase_at(phases, max(step - 1, 0)) if step is not None else phases[-1]
    return p.index, p.cfg


def video_processor_fields(cfg: Config, step: Optional[int] = None) -> dict:
    """`VJEPA2VideoProcessor` settings that preprocess as the run did: frames and crop of the run (with
    `phases`, of the phase that trained step `step`: `trained_phase`), pixels scaled to [0, 1] and
    normalized with the ImageNet mean/std our loaders use, bilinear resize.

    The stock processor always resizes the short side to crop * 256 / 224 before the centre crop (V-JEPA 2's
    evaluation convention); it takes clips of `num_frames` frames as given (no frame sampling).
    """
    from vjepa_scale.data.clips import IMAGENET_MEAN, IMAGENET_STD

    last = trained_phase(cfg, step)[1].data  # with `phases`: the clip shape the weights were trained last with
    crop = last.crop_size
    return {"video_processor_type": "VJEPA2VideoProcessor", "do_convert_rgb": True,
            "do_resize": True, "size": {"shortest_edge": int(crop * 256 / 224)}, "resample": 2,  # bilinear
            "do_center_crop": True, "crop_size": {"height": crop, "width": crop},
            "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
            "image_mean": list(IMAGENET_MEAN), "image_std": list(IMAGENET_STD),
            "do_sample_frames": False, "num_frames": last.frames_per_clip}


def make_hf_config(cfg: Config, dtype: torch.dtype = torch.float32, step: Optional[int] = None):
    """A `VJEPA2Config` (RoPE) or our remote-code `VJEPASinCosConfig` (sin-cos) for `cfg`; a RoPE
    config takes the clip of the phase that trained step `step` (`trained_phase`), see the module doc."""
    if cfg.model.pos_embed == "rope":
        from transformers import VJEPA2Config

        clip = trained_phase(cfg, step)[1].data
        fields = config_to_hf_fields(cfg) | dict(crop_size=clip.crop_size, frames_per_clip=clip.frames_per_clip)
        hf = VJEPA2Config(**fields)
        hf.architectures = ["VJEPA2Model"]
    else:
        from vjepa_scale.hf.modeling_vjepa_sincos import VJEPASinCosConfig

        hf = VJEPASinCosConfig(**config_to_hf_fields(cfg))
        hf.architectures = ["VJEPASinCosModel"]
        module = REMOTE_CODE.stem
        hf.auto_map = {"AutoConfig": f"{module}.VJEPASinCosConfig", "AutoModel": f"{module}.VJEPASinCosModel"}
    hf.dtype = str(dtype).removeprefix("torch.")
    return hf


def export_to_hf(cfg: Config, encoder: StateDict, out_dir: str | os.PathLike, predictor: Optional[StateDict] = None,
                 *, step: Optional[int] = None, which: str = "target", max_shard_size: int | str = "5GB",
                 dtype: torch.dtype = torch.float32, overwrite: bool = False) -> Path:
    """Write `encoder` (+ `predictor`) state dicts of our models to a Hugging Face folder.

    `which` (target / online) and `step` go into the model card. An existing non-empty `out_dir` is
    refused unless `overwrite` (which removes the files an earlier export wrote there, shards included).
    """
    out = Path(out_dir)
    _prepare_dir(out, overwrite)
    shapes = expected_shapes(cfg)
    check_state_dict(encoder, shapes["encoder"], "encoder", "export")
    if predictor is not None:
        check_state_dict(predictor, shapes["predictor"], "predictor", "export")
    sd = keys.encoder_to_hf(encoder)
    if predictor is not None:
        sd.update(keys.predictor_to_hf(predictor))
    sd = {k: v.detach().to("cpu", dtype).contiguous() for k, v in sd.items()}

    from huggingface_hub import save_torch_state_dict

    save_torch_state_dict(sd, out, max_shard_size=max_shard_size, metadata={"format": "pt"})
    hf = make_hf_config(cfg, dtype, step)
    hf.save_pretrained(out)
    # huggingface_hub writes the weights through a temp file (mode 0600): give them the mode the umask
    # gives a new file, as config.json got
    mode = (out / "config.json").stat().st_mode & 0o777
    for f in out.glob("model*.safetensors"):
        f.chmod(mode)
    if cfg.model.pos_embed == "sincos":
        shutil.copyfile(REMOTE_CODE, out / REMOTE_CODE.name)
    (out / VIDEO_PROCESSOR_FILE).write_text(json.dumps(video_processor_fields(cfg, step), indent=2) + "\n")
    (out / "README.md").write_text(model_card(cfg, step=step, which=which, with_predictor=predictor is not None,
                                              num_params=sum(v.numel() for v in sd.values())))
    return out


def check_export_dir(out_dir: str | os.PathLike, overwrite: bool) -> None:
    """FileExistsError unless `out_dir` can take an export: absent, an empty folder, or any folder with
    `overwrite`. Changes nothing (`export_to_hf` checks again; callers check before any slow work)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} is not empty; pass overwrite=True (--overwrite) to replace an export")


def _prepare_dir(out: Path, overwrite: bool) -> None:
    check_export_dir(out, overwrite)
    if out.is_dir():
        for f in out.iterdir():
            if f.name in _OUR_FILES or (f.name.startswith("model-") and f.name.endswith(".safetensors")):
                f.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _sampling(d) -> str:
    """How the run took a clip's frames (the model card's words)."""
    how = (f"sampled at {d.fps:g} fps (per video, frame step max(1, ceil(video fps) // {d.fps:g}))" if d.fps is not None
           else f"frame step {d.frame_step}")
    if d.frame_spacing == "linspace":
        how += f", {d.frames_per_clip} frames spread over {d.frames_per_clip} steps as the reference repos do"
    return how + (", videos shorter than a clip padded with their last frame" if d.short_videos == "pad" else "")


def model_card(cfg: Config, *, step: Optional[int], which: str, with_predictor: bool, num_params: int) -> str:
    """README.md: what the folder holds, how to load it, and the training recipe."""
    dims = resolve_vit_size(cfg.model)
    rope = cfg.model.pos_embed == "rope"
    loader = ("from transformers import VJEPA2Model\nmodel = VJEPA2Model.from_pretrained(PATH)" if rope else
              "from transformers import AutoModel\nmodel = AutoModel.from_pretrained(PATH, trust_remote_code=True)")
    phases = cfg.phase_configs()
    index, trained = trained_phase(cfg, step)
    d, m = trained.data, cfg.model  # d: the clip shape the weights were trained last with
    last_note = f" (phase {index}, which trained step {step})" if cfg.phases and step is not None else \
        " (the last phase)" if cfg.phases else ""
    def pct(lo: float, hi: float) -> str:
        return f"{lo:.0%}" if lo == hi else f"{lo:.0%}-{hi:.0%}"

    masks = "; ".join(f"union of {s.num_blocks} blocks of {pct(*s.spatial_scale)} of the frame area"
                      for s in cfg.mask.types)
    pred_note = ""
    if with_predictor and m.mask_tokens == "shared":
        pred_note = (" The predictor holds one mask token, shared by every mask type (`model.mask_tokens: shared`, "
                     "`pred_mask_tokens` in config.json); a forward with masks predicts with it whatever `mask_index`.")
    elif with_predictor and len(cfg.mask.types) > 1:
        pred_note = (f" The predictor holds one mask token per mask type ({len(cfg.mask.types)}); like `VJEPA2Model`, "
                     f"a forward with masks predicts with mask token 1 (the second mask type of the recipe).")
    recipe = yaml.safe_dump({k: v for k, v in cfg.to_dict().items() if k != "deepspeed"}, sort_keys=False)
    rope_note = ("Positions are 3D RoPE, loadable by the stock `vjepa2` model, which numbers them on the grid of "
                 f"config.json's crop_size ({d.crop_size} px): feed it square clips of that crop.")
    return f"""---
library_name: transformers
tags:
- video
- self-supervised-learning
- v-jepa
- vjepa-scale
---

# V-JEPA {m.size} ({dims.width}/{dims.depth}/{dims.num_heads}), {'RoPE' if rope else 'sin-cos'} positions

Video encoder pretrained with V-JEPA (feature prediction in latent space) by `vjepa-scale`.
This folder holds the **{which}** encoder{' (the EMA copy)' if which == 'target' else ''} at training
step **{step if step is not None else 'unknown'}**{' and the predictor' if with_predictor else
' (no predictor weights: the predictor in the loaded model is randomly initialized)'};
{num_params / 1e6:.1f}M parameters.

```python
{loader}
from transformers import AutoVideoProcessor  # needs torchvision
processor = AutoVideoProcessor.from_pretrained(PATH)  # {d.frames_per_clip} frames, {d.crop_size} px crop, ImageNet mean/std
video = processor(frames, return_tensors="pt")["pixel_values_videos"]  # frames: (T, H, W, 3) uint8
features = model(video, skip_predictor=True).last_hidden_state  # (batch, tokens, {dims.width})
```
{'Fine-tuning: `VJEPA2ForVideoClassification.from_pretrained(PATH, num_labels=K)` loads this encoder (only '
 'the attentive pooler and the classifier start fresh).' if rope else ''}

Needs `transformers>=5`. Tokens are tubelets of {m.tubelet_size}x{m.patch_size}x{m.patch_size} in (time, height,
width) raster order.{pred_note}
{rope_note if rope else
'Positions are fixed 3D sin-cos tables, which the stock `vjepa2` model cannot represent: the model class '
'ships in `modeling_vjepa_sincos.py` (same parameter names as `vjepa2`).'}

## Training recipe

| item | value |
|---|---|
| clip | {d.frames_per_clip} frames, {_sampling(d)}, crop {d.crop_size}{last_note} |
| encoder | width {dims.width}, depth {dims.depth}, heads {dims.num_heads}, MLP ratio {dims.mlp_ratio:g} |
| predictor | width {m.pred_width}, depth {m.pred_depth}, heads {m.pred_num_heads} |
| masks | {masks} |
{_schedule_rows(cfg, phases)}
<details><summary>Full configuration</summary>

```yaml
{recipe}```

</details>
"""


def _batch_text(d: DataConfig) -> str:
    if d.tokens_per_batch is not None:
        return f"{d.tokens_per_batch} full-clip tokens per rank"
    if d.global_batch_size is not None:
        return f"{d.global_batch_size} clips"
    return f"{d.batch_size or DEFAULT_BATCH_SIZE} clips per rank"


def _optim_text(o: OptimConfig) -> str:
    """The LR and WD schedules as `train.schedules` runs them (on the horizon `ipe_scale x iterations`)."""
    lr = f"LR {o.start_lr:g} -> {o.lr:g} over {o.warmup} warmup steps, then " if o.warmup else f"LR {o.lr:g}, "
    if o.lr_schedule == "cosine":
        lr += f"cosine toward {o.final_lr:g}"
    elif o.cooldown:
        lr += f"held, then linear toward {o.final_lr:g} over the horizon's last {o.cooldown} steps"
    else:
        lr += "held, no cooldown"
    wd = (f"WD {o.weight_decay:g} (constant)" if o.wd_schedule == "constant" else
          f"WD {o.weight_decay:g} -> {o.final_weight_decay:g} (cosine)")
    return f"AdamW; {lr} (`{o.lr_schedule}`, {o.horizon}-step horizon); {wd}"


def _ema_text(o: OptimConfig) -> str:
    return (f"momentum {o.ema[0]:g} (constant)" if o.ema_schedule == "constant" else
            f"momentum {o.ema[0]:g} -> {o.ema[1]:g} (linear)")


def _schedule_rows(cfg: Config, phases: list[Config]) -> str:
    """The recipe table's optimizer, EMA, steps and batch rows; with `phases`, one row per phase."""
    o = cfg.optim
    if not cfg.phases:
        return (f"| optimizer | {_optim_text(o)} |\n| EMA | {_ema_text(o)} |\n"
                f"| steps | {o.iterations} (schedules on a {o.ipe_scale:g}x horizon) |\n"
                f"| batch | {_batch_text(cfg.data)} |\n")
    rows = [f"| steps | {o.iterations} in {len(phases)} phases, each with its own schedules (below) |", "",
            "### Phases (in training order)", "",
            "| phase | steps | clip | batch | optimizer | EMA |", "|---|---|---|---|---|---|"]
    for i, (p, c) in enumerate(zip(cfg.phases, phases)):
        name = f"{i}" + (f" ({p.name})" if p.name else "")
        rows.append(f"| {name} | {c.optim.iterations} | {c.data.frames_per_clip} frames, crop {c.data.crop_size} | "
                    f"{_batch_text(c.data)} | {_optim_text(c.optim)} | {_ema_text(c.optim)} |")
    return "\n".join(rows) + "\n"
