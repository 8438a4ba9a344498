"""`model.compile: true`: each transformer block compiled in place with packed attention as the opaque op
`vjepa::packed_attention`; the same loss and gradients as eager, and no recompiles over steps whose mask
lengths change (torch._dynamo's graph counter), on a plain module and under 1-rank DeepSpeed engines."""
import pytest
import torch
from torch._dynamo.utils import counters

from helpers import require, single_process_group, tiny_config
from vjepa_scale.config import load_config
from vjepa_scale.masks import MultiBlockMasker
from vjepa_scale.models import JEPA, compute_targets, make_target_encoder
from vjepa_scale.models.compiled import is_compiled


def _graphs() -> int:
    return counters["stats"]["unique_graphs"]


def test_compiled_blocks_match_eager_without_recompiles():
    torch._dynamo.reset()
    counters.clear()
    models = []
    for compile_ in (True, False):
        cfg = tiny_config(batch_size=2, backend="padded", compile=compile_, depth=1, pred_depth=1)
        torch.manual_seed(0)
        jepa = JEPA(cfg)
        models.append((jepa, make_target_encoder(jepa.encoder)))
    (cj, ct), (ej, et) = models
    assert is_compiled(cj) and is_compiled(ct) and not is_compiled(ej)
    assert [n for n, _ in cj.named_parameters()] == [n for n, _ in ej.named_parameters()]  # same state dict keys
    masker = MultiBlockMasker(cfg.mask, cfg.grid)
    video = torch.randn(2, 3, 8, 64, 64)
    seen, lengths = [], set()
    for step in range(4):  # steps 2 and 3 bring context lengths the first two did not have
        masks = masker(2, step=step)
        lengths.add((masks.ctx_max_seqlen, sum(masks.ctx_lengths)))
        losses = []
        for jepa, target in models:
            jepa.zero_grad()
            loss = jepa(video, masks, compute_targets(target, video, masks))
            loss.backward()
            losses.append(loss.detach())
        torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=0)
        for p, q in zip(cj.parameters(), ej.parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6)
        seen.append(_graphs())
    assert len(lengths) == 4  # the token counts changed at every step
    # the first two steps compile each block kind (encoder, predictor, target; the attention backend's
    # resolution is cached on the first call); after that, changing lengths compile nothing new
    assert 0 < seen[1] <= 8 and seen[1:] == [seen[1]] * 3, seen


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_compile_under_deepspeed_engine(stage, tmp_path):
    """The Trainer with model.compile on a 1-rank gloo group: the same losses as eager (fp32), no new
    graphs at the third step (other mask lengths than the first two). ZeRO-3 works too, but its
    parameter-fetch hooks (compiler-disabled) split each block into one graph per submodule (docs/PERF.md)."""
    require("deepspeed")
    from vjepa_scale.train.engine import Trainer
    from vjepa_scale.train.launch import preflight

    env = single_process_group()
    torch._dynamo.reset()
    counters.clear()
    steps = 3  # two that compile, one that must not
    losses, graphs, lengths = {}, [], []
    for compile_ in ("true", "false"):
        cfg = load_config("cpu_demo", ["model.depth=1", "data.crop_size=32", "data.global_batch_size=2",
                                       f"optim.iterations={steps}", "train.precision=fp32", f"zero.stage={stage}",
                                       f"model.compile={compile_}", "model.attention_backend=padded"])
        tr = Trainer(preflight(cfg, 1), tmp_path / f"compile_{compile_}", env=env)
        it = iter(tr.loader(steps))
        losses[compile_] = []
        for _ in range(steps):
            batch = next(it)
            losses[compile_].append(float(tr.train_step([batch])["loss"]))
            if compile_ == "true":
                graphs.append(_graphs())
                lengths.append((batch.masks.ctx_max_seqlen, sum(batch.masks.ctx_lengths)))
    assert losses["true"] == pytest.approx(losses["false"], rel=1e-5)
    assert lengths[2] not in lengths[:2], lengths  # the third step has lengths not compiled for
    assert graphs[1:] == [graphs[1]] * (steps - 1), graphs
    if stage == 2:
        assert graphs[1] <= 8  # whole blocks: no graph breaks
