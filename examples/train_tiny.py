"""Train one tiny classifier per loss on a long-tailed synthetic problem and print the results.

    python examples/train_tiny.py [--losses cross_entropy,focal_loss,poly1_cross_entropy] [--steps 300]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import polyfocal as pf


def long_tailed_blobs(num_classes: int, imbalance: float, n_max: int, dim: int, generator):
    """Gaussian blobs whose class sizes fall geometrically from n_max to n_max / imbalance."""
    centers = torch.randn(num_classes, dim, generator=generator) * 2.0
    xs, ys = [], []
    for c in range(num_classes):
        n = max(2, int(n_max * imbalance ** (-c / (num_classes - 1))))
        xs.append(centers[c] + torch.randn(n, dim, generator=generator) * 2.6)
        ys.append(torch.full((n,), c))
    return torch.cat(xs), torch.cat(ys), centers


def balanced_test_set(centers, n_per_class: int, generator):
    x = centers.repeat_interleave(n_per_class, 0)
    x = x + torch.randn(x.shape, generator=generator) * 2.6
    return x, torch.arange(len(centers)).repeat_interleave(n_per_class)


def train(loss_fn: nn.Module, x, y, num_classes: int, steps: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(x.shape[1], 64), nn.ReLU(), nn.Linear(64, num_classes))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        index = torch.randint(0, len(x), (256,))
        loss = loss_fn(model(x[index]), y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


def balanced_accuracy(pred, y, num_classes: int) -> float:
    recalls = [(pred[y == c] == c).float().mean() for c in range(num_classes)]
    return float(torch.stack(recalls).mean())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--losses", default="cross_entropy,focal_loss,poly1_cross_entropy")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    num_classes, generator = 8, torch.Generator().manual_seed(args.seed)
    x, y, centers = long_tailed_blobs(num_classes, imbalance=50.0, n_max=2000, dim=16, generator=generator)
    x_test, y_test = balanced_test_set(centers, 500, generator)
    print(f"train: {len(x)} examples, class sizes {torch.bincount(y).tolist()}; test: balanced, {len(x_test)}")
    print(f"{'loss':<24} {'accuracy':>9} {'balanced acc':>13} {'tail-class recall':>18}")
    for name in args.losses.split(","):
        model = train(pf.build_loss(name), x, y, num_classes, args.steps, args.seed)
        with torch.no_grad():
            pred = model(x_test).argmax(1)
        tail = float((pred[y_test == num_classes - 1] == num_classes - 1).float().mean())
        accuracy = float((pred == y_test).float().mean())
        print(f"{name:<24} {accuracy:>9.3f} {balanced_accuracy(pred, y_test, num_classes):>13.3f} {tail:>18.3f}")


if __name__ == "__main__":
    main()
