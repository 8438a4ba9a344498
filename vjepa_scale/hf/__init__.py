"""Hugging Face export (+ the remote modeling code of sin-cos models). Reading HF folders and
official V-JEPA checkpoints lives in `vjepa_scale.weights`."""
from vjepa_scale.hf.export import export_to_hf, make_hf_config

__all__ = ["export_to_hf", "make_hf_config"]
