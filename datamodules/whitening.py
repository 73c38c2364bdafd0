"""Global contrast normalisation + ZCA whitening, the preprocessing of maxout and All-CNN.

Goodfellow et al. 2013 (Maxout Networks, arXiv 1302.4389) and Springenberg et al. 2015
(Striving for Simplicity: The All Convolutional Net, arXiv 1412.6806) train on CIFAR "whitened
and contrast normalized" as in pylearn2's ``scripts/datasets/make_cifar10_gcn_whitened.py``:
``CIFAR10(gcn=55.)`` then ``preprocessing.ZCA()`` with its default ``filter_bias=0.1``. So:

* GCN, per image over all ``C*H*W`` values: subtract the image's mean, scale to an L2 norm of
  ``scale`` = 55 (pylearn2 ``global_contrast_normalize(scale=55, use_std=False, sqrt_bias=0)``);
  near-constant images (norm < 1e-8) are only centred.
* ZCA, fitted on the GCN'd training split only: ``x -> (x - mu) @ U diag((lambda + eps)^-1/2) U^T``
  with ``lambda, U`` the eigenpairs of the (1/N) covariance and ``eps`` = 0.1 (pylearn2's
  ``filter_bias`` default; Coates & Ng use a comparable bias). Directions with variance well above
  ``eps`` come out with unit variance, weaker ones are damped rather than amplified into noise.

Unlike pylearn2, which rewrote the stored dataset, the transform runs per batch after augmentation
(``(N, 3072) @ (3072, 3072)``, ~2.4 GFLOP per 128 images), so data stays uint8 in memory.
"""

from __future__ import annotations

import torch

GCN_SCALE = 55.0
ZCA_EPSILON = 0.1


def global_contrast_normalize(x: torch.Tensor, scale: float = GCN_SCALE, min_divisor: float = 1e-8) -> torch.Tensor:
    """Rows of ``x`` ``(N, D)`` centred and scaled to L2 norm ``scale``."""
    x = x - x.mean(1, keepdim=True)
    norm = x.norm(dim=1, keepdim=True) / scale
    return x / torch.where(norm < min_divisor, torch.ones_like(norm), norm)


class GCNZCAWhitener:
    """GCN then ZCA on uint8 ``(N, C, H, W)`` batches; ``fit`` on the training split only.

    Args:
        scale: L2 norm of every image after GCN (55, pylearn2/maxout).
        epsilon: Added to the covariance eigenvalues before the inverse square root (0.1).
    """

    def __init__(self, scale: float = GCN_SCALE, epsilon: float = ZCA_EPSILON) -> None:
        self.scale = scale
        self.epsilon = epsilon
        self.mean: torch.Tensor | None = None  # (D,)
        self.matrix: torch.Tensor | None = None  # (D, D), symmetric

    def _gcn(self, images: torch.Tensor) -> torch.Tensor:
        return global_contrast_normalize(images.flatten(1).float(), self.scale)

    def fit(self, images: torch.Tensor, chunk: int = 4096) -> GCNZCAWhitener:
        """Fit mean and whitening matrix: float32 products per chunk, accumulated in float64."""
        dim = images[0].numel()
        total = torch.zeros(dim, dtype=torch.float64)
        second = torch.zeros(dim, dim, dtype=torch.float64)
        for start in range(0, len(images), chunk):
            x = self._gcn(images[start : start + chunk])
            total += x.sum(0, dtype=torch.float64)
            second += (x.T @ x).double()
        mean = total / len(images)
        covariance = second / len(images) - torch.outer(mean, mean)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        scaling = (eigenvalues.clamp(min=0) + self.epsilon).rsqrt()
        self.mean = mean.float()
        self.matrix = ((eigenvectors * scaling) @ eigenvectors.T).float()
        return self

    def state_dict(self) -> dict[str, torch.Tensor | float]:
        if self.mean is None or self.matrix is None:
            raise RuntimeError("fit() the whitener first")
        return {"mean": self.mean, "matrix": self.matrix, "scale": self.scale, "epsilon": self.epsilon}

    def load_state_dict(self, state: dict[str, torch.Tensor | float]) -> GCNZCAWhitener:
        self.mean, self.matrix = state["mean"], state["matrix"]
        self.scale, self.epsilon = float(state["scale"]), float(state["epsilon"])
        return self

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (or float) ``(N, C, H, W)`` -> whitened float of the same shape."""
        if self.mean is None or self.matrix is None:
            raise RuntimeError("fit() the whitener first")
        if self.mean.device != images.device:  # move once, to wherever the batches live
            self.mean, self.matrix = self.mean.to(images.device), self.matrix.to(images.device)
        if images[0].numel() != self.mean.numel():
            raise ValueError(f"whitener fitted on {self.mean.numel()} values per image, got {tuple(images.shape[1:])}")
        x = self._gcn(images) - self.mean
        return (x @ self.matrix).view(images.shape)
