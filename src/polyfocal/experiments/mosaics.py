"""The multi-label task's images: mosaics of digit tiles, each image holding a few of many labels.

A mosaic is a ``grid x grid`` canvas of 8x8 tiles; each tile is blank or a digit drawn from a long-tailed label
distribution, and the image's labels are the digits on it (multi-hot). Train and test mosaics draw their tiles
from disjoint sets of digit images.
"""

from __future__ import annotations

import numpy as np


def label_distribution(classes: int, imbalance: float) -> np.ndarray:
    """``p_c`` proportional to ``imbalance^(-c / (classes - 1))``: label 0 the most frequent, the last
    ``imbalance`` times rarer."""
    weights = imbalance ** (-np.arange(classes) / max(classes - 1, 1))
    return weights / weights.sum()


def digit_mosaics(images: np.ndarray, labels: np.ndarray, count: int, rng: np.random.Generator, *,
                  grid: int = 2, blank: float = 0.3, imbalance: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` mosaics of the 8x8 ``images`` (values in [0, 1]) with their ``labels``: ``(x, y)``, ``x`` of
    shape ``(count, (8 grid)^2)`` and ``y`` the multi-hot ``(count, C)``; every mosaic has at least one digit."""
    classes = int(labels.max()) + 1
    by_class = [np.flatnonzero(labels == c) for c in range(classes)]
    p = label_distribution(classes, imbalance)
    x = np.zeros((count, 8 * grid, 8 * grid))
    y = np.zeros((count, classes))
    for i in range(count):
        tiles = rng.random(grid * grid) >= blank
        tiles[rng.integers(grid * grid)] = True
        for k in np.flatnonzero(tiles):
            c = rng.choice(classes, p=p)
            row, col = divmod(int(k), grid)
            x[i, 8 * row:8 * row + 8, 8 * col:8 * col + 8] = images[rng.choice(by_class[c])].reshape(8, 8)
            y[i, c] = 1.0
    return x.reshape(count, -1), y
