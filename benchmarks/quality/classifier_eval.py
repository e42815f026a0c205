"""Diagnostics of a trained classifier on the lossless test set: clean accuracy and L2-PGD robust accuracy.

They say whether BIGROC's classifier is in fact robust (its premise), and what the joint training cost in
accuracy. The attack is the standard one: cross-entropy ascent, L2 ε = 0.5, 10 steps of α = 2.5·ε/10
(Madry et al. 2018), on the first `n_robust` test images, using `ccfast.pgd.pgd_l2`.
"""

from __future__ import annotations

import numpy as np
import torch

from ccfast.checkpoint import load_checkpoint
from ccfast.data import uint8_to_float
from ccfast.objectives import cross_entropy_ref
from ccfast.pgd import pgd_l2

ROBUST_EPS = 0.5
ROBUST_STEPS = 10


def classifier_accuracy(checkpoint, images: np.ndarray, labels: np.ndarray, device="cpu", n_robust: int = 1000,
                        batch_size: int = 500) -> dict:
    model, info = load_checkpoint(checkpoint, device)
    y_all = torch.as_tensor(labels, dtype=torch.int64)
    correct = 0
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = uint8_to_float(images[i:i + batch_size]).to(device)
            correct += int((model(x).argmax(1).cpu() == y_all[i:i + batch_size]).sum())
    robust_correct, n_r = 0, min(n_robust, len(images))
    for i in range(0, n_r, batch_size):
        x0 = uint8_to_float(images[i:min(n_r, i + batch_size)]).to(device)
        y = y_all[i:i + len(x0)].to(device)
        x_adv, _ = pgd_l2(lambda x, y=y: cross_entropy_ref(model(x), y), x0, ROBUST_STEPS,
                          2.5 * ROBUST_EPS / ROBUST_STEPS, ROBUST_EPS, ascend=True)
        with torch.no_grad():
            robust_correct += int((model(x_adv).argmax(1) == y).sum())
    return {"test_accuracy": correct / len(images), "test_images": len(images),
            f"robust_accuracy_l2_{ROBUST_EPS}": robust_correct / max(1, n_r), "robust_images": n_r,
            "ell0": info.ell0}
