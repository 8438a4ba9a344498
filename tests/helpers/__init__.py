"""Everything the tests share, importable as `helpers` (pytest.ini puts tests/ on sys.path).

    from helpers import ROOT, tiny_config, launch, train_args, assert_ok, require

Dev extras (helpers.extras):
    require(module)          import a dev extra, or skip the module locally / fail in CI
    needs(module)            the same as a test mark
    extras_required()        CI=true or VJEPA_REQUIRE_EXTRAS=1
    check_dev_extras()       session start (conftest): in CI, stop when a `.[dev]` package is missing
Processes (helpers.procs):
    ROOT                     the checkout
    free_port()              a free TCP port on 127.0.0.1
    cpu_env(**kv), gpu_env(**kv)   subprocess environments (DeepSpeed on the CPU / free to pick CUDA)
    run(cmd, env, cwd, timeout)    subprocess.run with text output in the checkout
    launch(script, *args, nproc=None, launcher="torchrun"|"deepspeed", env, timeout)   run to the end
    start(script, *args, ..., log=None, **popen)   the same command, returned running (a Popen)
    run_ranks(script, *args, nproc=2)   nproc plain processes given RANK etc., no launcher: each rank's result
    command(script, *args, nproc, launcher)        the command line both run
    rank_processes(pid)      rank -> psutil.Process below a running launcher
    wait_for_step(run_dir, step, proc)   until a running job has logged `step` in metrics.jsonl
    train_args(run_dir, *opts, config="cpu_demo.yaml", resume=None)   tools/train.py's arguments
    assert_ok(result)        exit status 0, else the output's tail
    deepspeed_launcher()     the `deepspeed` script beside this python
    load_tool(name)          tools/<name>.py as a module
Models (helpers.builders):
    tiny_config(...)         a validated tiny Config on synthetic data
    single_process_group()   a 1-rank gloo group in this process (the trainer's own join)
    equal_tensors(a, b)      two {name: tensor} states are bitwise equal
    reference_ema(ckpts)     the single-process fp32 EMA over a run's consolidated checkpoints
Videos (helpers.videos):
    write_video_sets(base), write_bad_set(shapes_index, folder), video_cfg(...), write_index(path, entries),
    frame_ids(video_CTHW), numbered_frames(frames, h, w) / frame_numbers(frames_THWC)   (frames up to 899)
    streamable_videos(folder, n=4)   VP9 clips that can be read from a pipe
Images (helpers.images):
    write_images(folder, n=6, size=(40, 48))   smooth RGB PNGs: an image dataset folder
Official checkpoints (helpers.official):
    official_layout(encoder, predictor=None, enc_table=None, pred_table=None)   our weights in the
                             official V-JEPA torch.save layout
Disks (helpers.disks):
    tmpfs_mounts(base)       context: mount(size, ro=False) -> a small tmpfs (skips where not allowed)
Evaluation (helpers.features):
    TensorVideos(videos, labels), separable_features(n, classes, ...)
"""
from .builders import equal_tensors, reference_ema, single_process_group, tiny_config
from .disks import tmpfs_mounts
from .extras import ROOT, check_dev_extras, extras_required, missing_dev_extras, needs, require
from .features import TensorVideos, separable_features
from .images import write_images
from .official import official_layout
from .procs import (assert_ok, command, cpu_env, deepspeed_launcher, free_port, gpu_env, launch, load_tool,
                    rank_processes, run, run_ranks, start, train_args, wait_for_step)
from .videos import (frame_ids, frame_numbers, numbered_frames, streamable_videos, video_cfg, write_bad_set,
                     write_index, write_video_sets)

__all__ = ["ROOT", "TensorVideos", "write_images", "assert_ok", "check_dev_extras", "command", "cpu_env", "deepspeed_launcher",
           "equal_tensors", "extras_required", "frame_ids", "frame_numbers", "free_port", "gpu_env", "launch",
           "load_tool", "missing_dev_extras", "needs", "numbered_frames", "official_layout", "rank_processes",
           "reference_ema", "require", "run", "run_ranks", "separable_features",
           "single_process_group", "start", "streamable_videos", "tiny_config", "tmpfs_mounts", "train_args",
           "video_cfg", "wait_for_step", "write_bad_set", "write_index", "write_video_sets"]
