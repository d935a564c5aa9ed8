"""The frozen CLIP-like teacher: one interface over any open_clip model."""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F


def weights_identity(model: torch.nn.Module) -> str:
    """A stable short hash of a model's weights (names, shapes and values)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(name.encode())
        digest.update(str(tuple(t.shape)).encode())
        digest.update(str(t.dtype).encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:16]


class Teacher:
    """A frozen open_clip model with text, image and region encoders.

    Images are float tensors in 0..1, [B, 3, H, W]; they are resized to the tower's input size
    and normalised with the weights' own mean/std here, so callers never do it.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        *,
        image_size: int,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        identity: str | None = None,
        name: str = "custom",
    ) -> None:
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.image_size = int(image_size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.identity = identity or weights_identity(model)
        self.name = name

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def embed_dim(self) -> int:
        proj = getattr(self.model, "text_projection", None)
        if isinstance(proj, torch.Tensor):
            return int(proj.shape[1])
        if isinstance(proj, torch.nn.Linear):
            return int(proj.out_features)
        with torch.no_grad():
            return int(self.encode_text(["x"]).shape[1])

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """list of N strings -> [N, D] L2-normalised embeddings."""
        tokens = self.tokenizer(list(texts)).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in 0..1 -> resized and normalised input for the image tower."""
        images = images.to(self.device, torch.float32)
        if images.shape[-2:] != (self.image_size, self.image_size):
            images = F.interpolate(
                images, size=(self.image_size, self.image_size), mode="bilinear",
                align_corners=False, antialias=True,
            )
        return (images - self.mean.to(images.device)) / self.std.to(images.device)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in 0..1 -> [B, D] L2-normalised embeddings."""
        return F.normalize(self.model.encode_image(self.preprocess(images)).float(), dim=-1)
