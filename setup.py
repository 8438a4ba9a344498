"""vjepa-scale: large-scale V-JEPA video pretraining on DeepSpeed ZeRO (stages 1, 2 and 3)."""
from setuptools import setup

setup(
    name="vjepa-scale",
    version="0.1.0",
    description="V-JEPA video pretraining at scale: ZeRO-1/2/3, packed variable-length attention, fused kernels",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # Our Triton kernels live in the top-level `kernels/` folder; `vjepa_scale/kernels` is a
    # relative symlink to it, so they import (from a checkout too) and install as
    # `vjepa_scale.kernels`, never as a top-level `kernels` (an unrelated PyPI package).
    # The top-level `configs/` recipes ship as package data in `vjepa_scale/configs/`.
    packages=[
        "vjepa_scale",
        "vjepa_scale.models",
        "vjepa_scale.data",
        "vjepa_scale.train",
        "vjepa_scale.eval",
        "vjepa_scale.hf",
        "vjepa_scale.weights",
        "vjepa_scale.bench",
        "vjepa_scale.kernels",
        "vjepa_scale.configs",
    ],
    package_dir={"vjepa_scale.configs": "configs"},
    package_data={"vjepa_scale.configs": ["*.yaml"]},
    install_requires=[
        "torch>=2.10",
        "numpy",
        "pyyaml",
        "tqdm",
        "tensorboard",
        "safetensors",
        "av",
    ],
    extras_require={
        "train": ["deepspeed>=0.19.8"],  # train/zero_compat.py TESTED_DEEPSPEED; 0.17 breaks ZeRO-3 elastic resume
        "triton": ["triton>=3.4"],
        "hf": ["transformers>=5.0"],
        "dali": ["nvidia-dali-cuda130"],
        # flash-attn ships as an sdist that builds against the installed torch: install it with
        # `pip install flash-attn --no-build-isolation` (pip's isolated build cannot see torch)
        "flash": ["flash-attn"],
        # cuDNN SDPA on packed sequences (model.attention_backend: cudnn); uses torch's own cuDNN.
        # Offline GPU machines: bring the wheel and `pip install --no-deps` it.
        "cudnn": ["nvidia-cudnn-frontend>=1.32"],
        "dev": ["pytest", "deepspeed>=0.19.8", "triton>=3.4", "transformers>=5.0", "nvidia-dali-cuda130",
                "nvidia-cudnn-frontend>=1.32"],  # its graph validation runs on the CPU
    },
)
