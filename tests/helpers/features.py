"""In-memory stand-ins for the evaluation data: decoded clips as a Dataset, and a separable feature task."""
from __future__ import annotations

import torch


class TensorVideos(torch.utils.data.Dataset):
    """Decoded clips already in memory: items {video (V, K, C, T, H, W), label, index}."""

    def __init__(self, videos, labels):
        self.videos, self.labels = videos, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"video": self.videos[i], "label": self.labels[i], "index": i}


def separable_features(n, classes, views=2, tokens=6, dim=32, seed=0):
    """A FeatureSet (n, views, tokens, dim): class c puts a fixed random direction u_c on one random
    token; the rest is noise."""
    from vjepa_scale.eval.features import FeatureSet

    g = torch.Generator().manual_seed(seed)
    u = torch.randn(classes, dim, generator=torch.Generator().manual_seed(123))
    x = torch.randn(n, views, tokens, dim, generator=g)
    y = torch.arange(n) % classes
    pos = torch.randint(0, tokens, (n, views), generator=g)
    for i in range(n):
        for v in range(views):
            x[i, v, pos[i, v]] += 3 * u[y[i]]
    return FeatureSet(x, y, torch.arange(n))
