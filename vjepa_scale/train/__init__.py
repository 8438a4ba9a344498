"""vjepa_scale.train"""
