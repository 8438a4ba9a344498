"""Hugging Face export and pretrained-weight import (HF folders, official V-JEPA 1 / 2 checkpoints)."""
from vjepa_scale.hf.checks import CheckpointMismatchError, check_state_dict, expected_shapes
from vjepa_scale.hf.export import export_to_hf, make_hf_config
from vjepa_scale.hf.keys import KeyLayoutError
from vjepa_scale.hf.load import load_init_state, read_hf_weights

__all__ = ["CheckpointMismatchError", "KeyLayoutError", "check_state_dict", "expected_shapes", "export_to_hf",
           "load_init_state", "make_hf_config", "read_hf_weights"]
