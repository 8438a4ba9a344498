"""tools/motion_variants.py end to end: a tiny screen (random probe, a few pretraining steps, probes of
the target and online encoders, JSON), its random-init probe recomputed independently."""
import json

import torch

from helpers import load_tool
from vjepa_scale.eval.config import load_eval_config
from vjepa_scale.eval.features import FeatureSet
from vjepa_scale.eval.train_probe import train_probe
from vjepa_scale.models import JEPA

mv = load_tool("motion_variants")


def _random_init_probe(cfg, args) -> list[float]:
    """Val top-1 (seeds 0, 1) of the probe on the seed-0 random-init encoder, from the tool's own sets
    and clip rule, with features and probe built here."""
    torch.manual_seed(0)
    enc = JEPA(cfg).encoder.eval()
    sets = []
    for n, seed in zip(args.videos, (0, 1)):
        X, y = mv.make_set(args, n, seed)
        with torch.no_grad():
            f = torch.cat([enc(torch.stack([mv.clip(x, 0) for x in X[a:a + 32]])) for a in range(0, n, 32)])
        sets.append(FeatureSet(f[:, None], torch.from_numpy(y).long(), torch.arange(n)))
    pcfg = load_eval_config("probe_motion", [], validate=False)
    return [train_probe(*sets, pcfg.probe, pcfg.optim, 4, cfg.model.num_heads, s, torch.device("cpu"),
                        progress=False)["val_top1"] for s in (0, 1)]


def test_tiny_screen_end_to_end(tmp_path, monkeypatch):
    configs = []
    load_config = mv.load_config
    monkeypatch.setattr(mv, "load_config", lambda *a: configs.append(load_config(*a)) or configs[-1])
    out = tmp_path / "screen.json"
    argv = ["--pattern", "square", "--steps", "2", "--eval-every", "2", "--few", "2", "--batch", "4",
            "--videos", "16", "8", "--probe-online", "--threads", "1", "--out", str(out)]
    assert mv.main(argv) == 0
    res = json.loads(out.read_text())
    assert [(e["encoder"], e["step"]) for e in res["evals"]] == [("random", 0), ("pretrained", 2), ("online", 2)]
    for e in res["evals"]:
        assert len(e["full"]) == 2 and len(e["few"]) == 2
        assert all((a / 12.5).is_integer() for a in e["full"] + e["few"])  # a share of the 8 val videos
    (cfg,) = configs
    assert res["evals"][0]["full"] == _random_init_probe(cfg, mv.parse_args(argv))
