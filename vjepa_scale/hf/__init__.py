"""Hugging Face export (+ the remote modeling code of sin-cos models). Reading HF folders and
official V-JEPA checkpoints lives in `vjepa_scale.weights`."""
from vjepa_scale.hf.export import check_export_dir, export_to_hf, make_hf_config

__all__ = ["check_export_dir", "export_to_hf", "make_hf_config"]
