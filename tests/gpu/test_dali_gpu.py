"""DALI on the GPU (NVDEC): files NVDEC accepts (>= 256 px) decoded without the CPU fallback, on the
rank's own device, matching PyAV; files it cannot decode routed to PyAV per file. Skips without CUDA."""
from __future__ import annotations

import dataclasses
import pytest
import torch

from helpers import tiny_config
from helpers.dali_videos import colour_frames, encode, index_video
from vjepa_scale.config import DatasetSpec
from vjepa_scale.data import build_dataloader, dali_available
from vjepa_scale.data.clips import denormalize_clip, normalize_clip, plan_clips
from vjepa_scale.data.decode import decode_frames, probe_video
from vjepa_scale.data.synthetic_videos import INDEX_LEVEL_STEP, frame_index_level

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not (torch.cuda.is_available() and dali_available()),
                                                  reason="needs CUDA and nvidia-dali")]
SIZE = 256  # above every NVDEC minimum (HEVC 144, VP9/AV1 128)


def gpu_cfg(videos, tmp_path, frames=4, step=2, batch=4, crop=64):
    index = tmp_path / "i.txt"
    index.write_text("".join(f"{v} 0\n" for v in videos))
    cfg = tiny_config(crop=crop, frames=frames, batch_size=batch, depth=1)
    cfg.data = dataclasses.replace(cfg.data, backend="dali", datasets=[DatasetSpec(str(index), 1.0)], frame_step=step,
                                   num_workers=2)
    return cfg.validate()


def frame_ids(video_CTHW):
    level = denormalize_clip(video_CTHW.float()).mean(dim=(0, 2, 3))  # on the video's device
    return [int(round((v.item() - frame_index_level(0)) / INDEX_LEVEL_STEP)) for v in level]


@pytest.fixture(scope="module")
def nvdec_videos(tmp_path_factory):
    base = tmp_path_factory.mktemp("nvdec")
    h264 = [index_video(base / f"h{k}.mp4", "libx264", frames=24, height=SIZE, width=SIZE + 64) for k in range(2)]
    vp9 = [index_video(base / f"v{k}.webm", "libvpx-vp9", frames=24, height=SIZE, width=SIZE) for k in range(2)]
    return h264 + vp9


def test_nvdec_decodes_without_fallback_on_the_ranks_device(nvdec_videos, tmp_path):
    """H.264 + VP9 at 256 px: every clip decoded by DALI (no PyAV), bf16 on this rank's GPU, right frames,
    and the helper thread works on that GPU too."""
    from vjepa_scale.data.dali import rank_device_id

    cfg = gpu_cfg(nvdec_videos, tmp_path)
    device = rank_device_id()
    loader = build_dataloader(cfg, num_steps=2)
    assert not loader.on_cpu and not loader.unusable, (loader.on_cpu, loader.unusable)
    seen = []
    original = loader.batch

    def recording(samples):
        seen.append(torch.cuda.current_device())
        return original(samples)

    loader.batch = recording
    for batch in loader:
        assert batch.video.device == torch.device("cuda", device) and batch.video.dtype == torch.bfloat16
        assert batch.video.shape == (4, 3, 4, 64, 64) and batch.skipped == []
        for row, i in enumerate(batch.index):
            info = probe_video(nvdec_videos[i])
            (plan,) = plan_clips(info.num_frames, info.height, info.width, cfg.data, cfg.data.seed, batch.step, i)
            assert frame_ids(batch.video[row]) == list(plan.frames)
    assert loader.stats["pyav_clips"] == 0 and loader.stats["dali_clips"] == 8 and loader.stats["dali_failures"] == 0
    assert seen == [device, device]


def test_nvdec_matches_pyav(nvdec_videos, tmp_path):
    """NVDEC + GPU resize vs PyAV + torch on the same plans: within a few grey levels."""
    from vjepa_scale.data.dali import DaliClipRunner, DaliItem, rank_device_id
    from vjepa_scale.data.nvdec import stream_format

    cfg = gpu_cfg(nvdec_videos, tmp_path)
    items = []
    for k, p in enumerate(nvdec_videos):
        info = probe_video(p)
        items.append(DaliItem(p, stream_format(p), plan_clips(info.num_frames, info.height, info.width, cfg.data, 0, 1, k)[0]))
    gpu = DaliClipRunner(4, 64, "gpu", device_id=rank_device_id()).run(items)
    assert gpu.is_cuda
    cpu = torch.stack([normalize_clip(torch.from_numpy(decode_frames(it.path, list(it.plan.frames))), it.plan.box,
                                      it.plan.flip, 64) for it in items]).to(gpu.device)
    assert ((gpu - cpu).abs() * 0.225 * 255).mean().item() < 3.0


def test_files_nvdec_cannot_decode_go_to_pyav_per_file(nvdec_videos, tmp_path):
    """10-bit HEVC and an odd-sized VP9 file next to NVDEC files: those two decoded by PyAV, the rest by DALI."""
    ten_bit = index_video(tmp_path / "hevc10.mkv", "libx265", frames=24, height=SIZE, width=SIZE, pix_fmt="yuv420p10le")
    odd = index_video(tmp_path / "odd.webm", "libvpx-vp9", frames=24, height=SIZE + 1, width=SIZE + 3)
    videos = nvdec_videos[:2] + [ten_bit, odd]
    cfg = gpu_cfg(videos, tmp_path)
    loader = build_dataloader(cfg, num_steps=1)
    assert set(loader.on_cpu) == {ten_bit, odd}
    (batch,) = list(loader)
    assert batch.video.is_cuda and sorted(batch.index) == [0, 1, 2, 3] and batch.skipped == []
    assert loader.stats["pyav_clips"] == 2 and loader.stats["dali_clips"] == 2
    for row, i in enumerate(batch.index):
        info = probe_video(videos[i])
        (plan,) = plan_clips(info.num_frames, info.height, info.width, cfg.data, cfg.data.seed, batch.step, i)
        assert frame_ids(batch.video[row]) == list(plan.frames)


def test_bt709_colours_on_gpu(tmp_path):
    from vjepa_scale.data.clips import ClipPlan
    from vjepa_scale.data.dali import DaliClipRunner, DaliItem, rank_device_id
    from vjepa_scale.data.nvdec import stream_format

    path = encode(tmp_path / "709.mp4", colour_frames(4, SIZE, SIZE), "libx264", colorspace=1, options={"crf": "0"})
    plan = ClipPlan((0, 1, 2, 3), (0, 0, SIZE, SIZE), False)
    runner = DaliClipRunner(1, 64, "gpu", device_id=rank_device_id())
    ref = normalize_clip(torch.from_numpy(decode_frames(path, list(plan.frames))), plan.box, plan.flip, 64)
    err = lambda fmt: (denormalize_clip(runner.run([DaliItem(path, fmt, plan)])[0].cpu()) - denormalize_clip(ref)
                       ).abs().mean().item()
    fixed, raw = err(stream_format(path)), err(None)
    assert fixed < 2.5 and raw > fixed + 1.5, (fixed, raw)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_second_rank_decodes_on_its_own_gpu(nvdec_videos, tmp_path, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    cfg = gpu_cfg(nvdec_videos, tmp_path)
    torch.cuda.set_device(0)  # the main thread's device must not matter
    loader = build_dataloader(cfg, num_steps=1)
    (batch,) = list(loader)
    assert batch.video.device == torch.device("cuda", 1) and loader.runner.device_id == 1
    assert loader.stats["pyav_clips"] == 0
