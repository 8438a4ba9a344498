"""FLOP counting against the design yardsticks (ViT-H/16 at 384 px)."""
from __future__ import annotations

from vjepa_scale.config import Config, DataConfig, MaskConfig
from vjepa_scale.flops import device_peak_tflops, mfu, peak_tflops_of, train_flops
from vjepa_scale.masks import MultiBlockMasker


def test_vith384_target_forward_and_attention_share():
    cfg = Config(data=DataConfig(backend="synthetic")).validate()  # ViT-H/16, 16x384x384
    masks = MultiBlockMasker(cfg.mask, cfg.grid)(10, step=0)
    f = train_flops(cfg, masks)
    per_clip = f["target_fwd"] / 10 / 1e12
    assert 9.0 < per_clip < 9.6  # design yardstick: ~9.3 TFLOP, 38% of it attention
    attn = 4 * 1280 * 4608 ** 2 * 32 / 1e12
    assert abs(attn / per_clip - 0.38) < 0.02
    assert f["total"] == f["target_fwd"] + f["encoder"] + f["predictor"]
    assert f["recompute"] == 0.0


def test_truncation_lowers_encoder_flops():
    cfg = Config(data=DataConfig(backend="synthetic")).validate()
    full = train_flops(cfg, MultiBlockMasker(cfg.mask, cfg.grid)(10, step=0))
    cut = train_flops(cfg, MultiBlockMasker(MaskConfig(truncate="batch_min"), cfg.grid)(10, step=0))
    assert cut["encoder"] < full["encoder"] and cut["target_fwd"] == full["target_fwd"]


def test_a_shared_mask_token_changes_only_its_gemm_and_the_parameter_count():
    """model.mask_tokens=shared: the one-hot GEMM placing the tokens has one column, not one per type; the
    rest of the step's FLOPs is the same, and the model has pred_width parameters fewer per dropped token."""
    from vjepa_scale.config import ModelConfig
    from vjepa_scale.train.memory import param_counts

    per_type = Config(data=DataConfig(backend="synthetic")).validate()
    shared = Config(model=ModelConfig(mask_tokens="shared"), data=DataConfig(backend="synthetic")).validate()
    masks = MultiBlockMasker(per_type.mask, per_type.grid)(10, step=0)
    a, b = train_flops(per_type, masks), train_flops(shared, masks)
    W, M = per_type.model.pred_width, len(per_type.mask.types)
    assert a["predictor"] - b["predictor"] == 2 * 2.0 * (M - 1) * W * sum(masks.tgt_lengths)
    assert all(a[k] == b[k] for k in ("target_fwd", "encoder", "attention", "recompute"))
    pa, pb = param_counts(per_type), param_counts(shared)
    assert (pa.online - pb.online, pa.encoder) == ((M - 1) * W, pb.encoder)


def test_peak_and_mfu():
    assert device_peak_tflops("cpu") is None
    names = {"NVIDIA H100 80GB HBM3": 989.0, "NVIDIA H100 NVL": 835.0, "NVIDIA H100 PCIe": 756.0,
             "NVIDIA H200": 989.0, "NVIDIA GH200 480GB": 989.0, "NVIDIA H20": 148.0, "NVIDIA B200": 2250.0,
             "NVIDIA GB200": 2500.0, "NVIDIA A100-SXM4-80GB": 312.0, "Tesla T4": None}
    assert {n: peak_tflops_of(n) for n in names} == names
    assert mfu(1e12, None) is None
    assert abs(mfu(494.5e12, 989.0) - 0.5) < 1e-9
