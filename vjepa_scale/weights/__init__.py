"""Reading weights: format detection, key maps, checks, and our own checkpoints consolidated on CPU.

- `load`: `load_init_state(path, cfg)` for an HF folder, an official V-JEPA 1 / 2 file or one of our runs
  (`check_init_source`: its checks that read no weights);
  `read_official` / `official_config` for official files alone;
- `releases`: the table of official V-JEPA 1 / 2 releases (`RELEASES`) an official file is matched against;
- `run`: the on-disk layout of our checkpoints (`find_latest`, `list_checkpoints`, ...) and
  `load_consolidated` (full fp32 weights from ZeRO-1/2/3 shards of any world size);
- `keys`: parameter-name maps between ours and the HF / official layouts;
- `checks`: the one name-and-shape check (`check_state_dict`, `CheckpointMismatchError`) and the
  architecture-field check against a run's training config (`check_architecture`);
- `hf_config`: the one map between our `Config` and an HF `config.json`.
Used by `train` (warm starts, resume discovery), `hf` (export) and `eval` (frozen encoders); it
imports none of them.
"""
from vjepa_scale.weights.checks import (CheckpointMismatchError, check_architecture, check_state_dict, expected_shapes,
                                       module_shapes)
from vjepa_scale.weights.hf_config import (HF_MODEL_TYPES, check_hf_fields, config_from_hf_fields,
                                           config_to_hf_fields, read_hf_config)
from vjepa_scale.weights.keys import KeyLayoutError
from vjepa_scale.weights.load import (OfficialFile, check_init_source, load_init_state, official_config, read_hf_weights,
                                      read_official)
from vjepa_scale.weights.releases import RELEASES, Release
from vjepa_scale.weights.run import (CKPT_SUBDIR, DS_TAG, DamagedCheckpointError, checkpoint_name,
                                     consolidate_shards, find_latest, is_complete, list_checkpoints,
                                     load_consolidated, resolve_checkpoint, unshard)

__all__ = ["CKPT_SUBDIR", "DS_TAG", "HF_MODEL_TYPES", "RELEASES", "CheckpointMismatchError", "DamagedCheckpointError",
           "KeyLayoutError",
           "OfficialFile", "Release", "official_config", "read_official",
           "check_architecture", "check_hf_fields", "check_init_source", "check_state_dict", "checkpoint_name", "config_from_hf_fields", "config_to_hf_fields",
           "consolidate_shards", "expected_shapes", "find_latest", "is_complete", "list_checkpoints",
           "load_consolidated", "load_init_state", "module_shapes", "read_hf_config", "read_hf_weights",
           "resolve_checkpoint", "unshard"]
