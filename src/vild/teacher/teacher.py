"""The frozen CLIP-like teacher: one interface over any open_clip model.

    teacher = Teacher.load("runs/teacher")            # a folder (open_clip local-dir layout)
    teacher = Teacher.load("hf-hub:org/repo")         # an open_clip repository on the HF Hub
    teacher = Teacher.load("ViT-B-32:openai")         # an open_clip architecture + pretrained tag
    teacher.encode_text(["a photo of a star."])       # [N, D], L2-normalised
    teacher.encode_images(images)                     # [B, 3, H, W] 0..1 -> [B, D]
    teacher.encode_regions(image, boxes)              # [3, H, W] 0..1, [N, 4] xyxy px -> [N, D]

Every source goes through open_clip's own factory (`local-dir:` / `hf-hub:` / built-in name +
pretrained tag), so a ShapeWorld teacher and a real CLIP load by the same code path. Anything
that prevents loading real weights raises `WeightsUnavailableError` with one line naming what
was tried and what to do; a teacher is never silently randomly initialised.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from vild.errors import VildError, WeightsUnavailableError
from vild.teacher.crops import _check_boxes, crop_and_resize, region_boxes
from vild.teacher.factory import (
    HF_HUB_PREFIX,
    LOCAL_DIR_PREFIX,
    _create,
    _hf_offline,
    _listing,
    _one_line,
    _quiet_open_clip,
)
from vild.teacher.folder import (
    CHECKPOINT_PATTERNS,
    CONFIG_NAME,
    WEIGHTS_NAME,
    save_teacher_folder,
    weights_identity,
)

REGION_SCALES = (1.0, 1.5)


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
        model_cfg: dict | None = None,
        preprocess_cfg: dict | None = None,
    ) -> None:
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.image_size = int(image_size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.identity = identity or weights_identity(model)
        self.name = name
        # open_clip model config (needed to save the teacher as a folder) and preprocess config
        self.model_cfg = model_cfg
        self.preprocess_cfg = dict(preprocess_cfg) if preprocess_cfg else {
            "size": self.image_size, "mean": list(map(float, mean)), "std": list(map(float, std)),
            "interpolation": "bilinear", "resize_mode": "squash",
        }

    def __repr__(self) -> str:
        return (f"Teacher(name={self.name!r}, embed_dim={self.embed_dim}, "
                f"image_size={self.image_size}, identity={self.identity!r})")

    # ------------------------------------------------------------------ loading / saving
    @classmethod
    def load(cls, name_or_path: str | os.PathLike, *, device: str | torch.device = "cpu",
             cache_dir: str | None = None) -> "Teacher":
        """A teacher from a folder, `local-dir:PATH`, `hf-hub:ORG/REPO` or `ARCH:PRETRAINED_TAG`.

        Folder = open_clip layout (open_clip_config.json + open_clip_model.safetensors), as
        written by `Teacher.save` / `vild train-teacher` and as on the HF Hub. `ARCH:TAG` is any
        open_clip built-in, e.g. `ViT-B-32:openai`, `ViT-B-32:laion2b_s34b_b79k` (a checkpoint
        file instead of the tag works too: `ViT-B-32:/path/to/weights.safetensors`).
        Raises WeightsUnavailableError (one line) when the weights cannot be had.
        """
        from vild.teacher.arch import register

        register()  # so folders / files of our own architecture resolve like built-ins
        spec = os.fspath(name_or_path).strip() if not isinstance(name_or_path, str) else name_or_path.strip()
        if not spec:
            raise WeightsUnavailableError("empty teacher name: pass a folder, hf-hub:ORG/REPO or ARCH:TAG")
        if spec.startswith(HF_HUB_PREFIX):
            return cls._load_hf_hub(spec[len(HF_HUB_PREFIX):], device=device, cache_dir=cache_dir)
        if spec.startswith(LOCAL_DIR_PREFIX):
            return cls._load_folder(spec[len(LOCAL_DIR_PREFIX):], device=device)
        import open_clip

        models = open_clip.list_models()
        if Path(spec).expanduser().exists():
            return cls._load_folder(spec, device=device)
        lowered = {m.lower() for m in models}
        if ":" in spec and spec.split(":", 1)[0].strip().replace("/", "-").lower() in lowered:
            arch, tag = spec.split(":", 1)
            return cls._load_pretrained(arch, tag, device=device, cache_dir=cache_dir)
        if spec.startswith((".", "/", "~")) or os.sep in spec or (os.altsep and os.altsep in spec):
            return cls._load_folder(spec, device=device)  # a path that does not exist: clear error
        if ":" in spec:
            arch, tag = spec.split(":", 1)
            return cls._load_pretrained(arch, tag, device=device, cache_dir=cache_dir)
        if spec.replace("/", "-") in models:
            arch = spec.replace("/", "-")
            tags = open_clip.list_pretrained_tags_by_model(arch)
            hint = f" (known tags: {_listing(tags)})" if tags else " (it has no pretrained tags)"
            raise WeightsUnavailableError(
                f"teacher {spec!r} names an architecture but no weights: use {arch}:TAG{hint}")
        raise WeightsUnavailableError(
            f"teacher {spec!r}: no such folder, and not hf-hub:ORG/REPO or an open_clip ARCH:TAG "
            f"(e.g. ViT-B-32:openai); train one with `vild train-teacher WORLD --out DIR`")

    @classmethod
    def _load_folder(cls, path_str: str, *, device) -> "Teacher":
        path = Path(path_str).expanduser()
        what = f"teacher folder {path}"
        fix = "point to a folder written by `vild train-teacher` or Teacher.save (or an open_clip hf-hub download)"
        if not path.exists():
            raise WeightsUnavailableError(
                f"{what} does not exist: train one with `vild train-teacher WORLD --out {path}`, "
                f"or pass an open_clip ARCH:TAG (e.g. ViT-B-32:openai) or hf-hub:ORG/REPO")
        if not path.is_dir():
            raise WeightsUnavailableError(
                f"{path} is a file, not a teacher folder (a folder with {CONFIG_NAME} and {WEIGHTS_NAME}); {fix}")
        config_path = path / CONFIG_NAME
        if not config_path.is_file():
            raise WeightsUnavailableError(f"{what} has no {CONFIG_NAME}: {fix}")
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise WeightsUnavailableError(f"{config_path} is not valid JSON ({e}): {fix}") from None
        if not isinstance(config, dict) or not isinstance(config.get("model_cfg"), dict):
            raise WeightsUnavailableError(f"{config_path} has no 'model_cfg' object: {fix}")
        checkpoints = sorted(p.name for pat in CHECKPOINT_PATTERNS for p in path.glob(pat))
        if not checkpoints:
            raise WeightsUnavailableError(
                f"{what} has no weights ({WEIGHTS_NAME} missing; a killed training run leaves no "
                f"folder, so re-run `vild train-teacher` or copy the weights there)")
        model_name = LOCAL_DIR_PREFIX + str(path)
        model = _create(model_name, None, device=device,
                        tried=f"{what} ({', '.join(checkpoints)})",
                        fix="the weights file is corrupt or not an open_clip checkpoint for this config; "
                            "re-run `vild train-teacher` or re-download it")
        return cls._from_open_clip(model, model_name, name=str(path), model_cfg=config["model_cfg"])

    @classmethod
    def _load_hf_hub(cls, repo: str, *, device, cache_dir) -> "Teacher":
        repo = repo.strip()
        if not repo or repo.count("/") != 1:
            raise WeightsUnavailableError(f"hf-hub:{repo}: expected hf-hub:ORG/REPO")
        offline = _hf_offline()
        fix = ("HF_HUB_OFFLINE=1 is set: unset it and connect once (the files are then cached), "
               "or download the folder and pass its path") if offline else (
               "check the repository id and your internet connection (or proxy); offline, download "
               "the folder once and pass its path")
        model_name = HF_HUB_PREFIX + repo
        model = _create(model_name, None, device=device, cache_dir=cache_dir,
                        tried=f"open_clip repository hf-hub:{repo}", fix=fix)
        config = None
        try:
            import open_clip

            config = open_clip.get_model_config(model_name)
        except Exception:  # the config was fetched a moment ago; this is only for Teacher.save
            pass
        return cls._from_open_clip(model, model_name, name=model_name, model_cfg=config,
                                   cache_dir=cache_dir)

    @classmethod
    def _load_pretrained(cls, arch: str, tag: str, *, device, cache_dir) -> "Teacher":
        import difflib

        import open_clip

        arch_clean = arch.strip().replace("/", "-")
        tag = tag.strip()
        models = open_clip.list_models()
        folded = [m for m in models if m.lower() == arch_clean.lower()]
        if arch_clean not in models and len(folded) == 1:
            arch_clean = folded[0]
        if arch_clean not in models:
            close = difflib.get_close_matches(arch_clean, models, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else "; see open_clip.list_models()"
            raise WeightsUnavailableError(f"teacher {arch}:{tag}: unknown open_clip architecture {arch!r}{hint}")
        if not tag:
            raise WeightsUnavailableError(f"teacher {arch}: empty pretrained tag after ':'")
        known = open_clip.list_pretrained_tags_by_model(arch_clean)
        is_file = Path(tag).expanduser().is_file()
        if not open_clip.pretrained.get_pretrained_cfg(arch_clean, tag) and not is_file:
            listing = _listing(known)
            raise WeightsUnavailableError(
                f"teacher {arch_clean}:{tag}: unknown pretrained tag {tag!r} for {arch_clean} "
                f"(known tags: {listing}; or give a checkpoint file path after the ':')")
        pretrained = str(Path(tag).expanduser()) if is_file else tag
        if is_file:
            fix = "the file is corrupt or not a checkpoint of this architecture"
        elif _hf_offline():
            fix = ("HF_HUB_OFFLINE=1 is set: unset it and connect once (the weights are then cached), "
                   "or pass a local teacher folder")
        else:
            fix = ("the weights are downloaded on first use: check your internet connection (or "
                   "proxy), or pass a local teacher folder")
        model = _create(arch_clean, pretrained, device=device, cache_dir=cache_dir,
                        tried=f"open_clip {arch_clean} with pretrained {pretrained!r}", fix=fix)
        return cls._from_open_clip(model, arch_clean, name=f"{arch_clean}:{tag}",
                                   model_cfg=open_clip.get_model_config(arch_clean),
                                   cache_dir=cache_dir)

    @classmethod
    def _from_open_clip(cls, model, model_name: str, *, name: str, model_cfg: dict | None,
                        cache_dir: str | None = None) -> "Teacher":
        import open_clip

        pp = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
        size = pp.get("size", getattr(model.visual, "image_size", 224))
        if isinstance(size, (tuple, list)):
            if size[0] != size[1]:
                raise VildError(f"teacher {name}: non-square image size {tuple(size)} is not supported")
            size = size[0]
        mean = tuple(float(v) for v in pp.get("mean", (0.48145466, 0.4578275, 0.40821073)))
        std = tuple(float(v) for v in pp.get("std", (0.26862954, 0.26130258, 0.27577711)))
        with _quiet_open_clip():
            try:
                tokenizer = open_clip.get_tokenizer(model_name, cache_dir=cache_dir)
            except Exception as e:  # noqa: BLE001 - surface as one line
                raise WeightsUnavailableError(f"teacher {name}: could not build its tokenizer: {_one_line(e)}") from None
        pp = {**pp, "size": int(size), "mean": list(mean), "std": list(std)}
        return cls(model, tokenizer, image_size=int(size), mean=mean, std=std, name=name,
                   model_cfg=model_cfg, preprocess_cfg=pp)

    def save(self, path: str | os.PathLike, *, info: dict | None = None) -> Path:
        """Write the teacher as an open_clip folder (atomically); returns the path.

        The folder is loadable by `Teacher.load(path)` and by
        `open_clip.create_model_and_transforms('local-dir:' + path)`.
        """
        if self.model_cfg is None:
            raise VildError(f"teacher {self.name}: its open_clip model config is unknown, cannot save it")
        return save_teacher_folder(self.model, path, model_cfg=self.model_cfg,
                                   preprocess_cfg=self.preprocess_cfg, info=info)

    # ------------------------------------------------------------------ encoders
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def logit_scale(self) -> float:
        """The temperature the teacher scores image-text cosines with (CLIP's learned
        logit scale, 100 for OpenAI's weights); 100 if the model has none."""
        scale = getattr(self.model, "logit_scale", None)
        return float(scale.detach().exp()) if isinstance(scale, torch.Tensor) else 100.0

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

    # ------------------------------------------------------------------ regions
    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """[..., 3, H, W] in 0..1 -> normalised with the teacher's mean/std (no resizing)."""
        images = images.to(self.device, torch.float32)
        return (images - self.mean.to(images.device)) / self.std.to(images.device)

    @torch.no_grad()
    def region_crops(self, image: torch.Tensor, boxes: torch.Tensor,
                     scales: Sequence[float] = REGION_SCALES) -> torch.Tensor:
        """Tower inputs for every box at every scale: [len(scales), N, 3, S, S], normalised.

        image: [3, H, W] float 0..1; boxes: [N, 4] xyxy px. Out-of-image area = the teacher's
        mean colour (0 after normalisation); boxes are never clipped (see `vild.teacher.crops`).
        """
        image = _check_image(image)
        crop_boxes = region_boxes(torch.as_tensor(boxes, dtype=torch.float32).cpu(), scales)  # [K, N, 4]
        k, n = crop_boxes.shape[:2]
        crops = crop_and_resize(self.normalize(image), crop_boxes.reshape(-1, 4), self.image_size)
        return crops.view(k, n, *crops.shape[1:])

    @torch.no_grad()
    def encode_regions(self, image: torch.Tensor, boxes: torch.Tensor, *,
                       batch_size: int = 128, scales: Sequence[float] = REGION_SCALES) -> torch.Tensor:
        """ViLD region embeddings: image [3, H, W] float 0..1, boxes [N, 4] xyxy px -> [N, D].

        Each box is embedded from its 1x crop and its 1.5x crop (same centre, 1.5x width and
        height); the two image embeddings are L2-normalised, summed and L2-normalised again.
        Boxes are processed `batch_size` at a time (len(scales) x batch_size crops per forward pass).
        `scales` replaces the paper's (1, 1.5) crops, for ablations.
        """
        return self.encode_regions_batch([image], [boxes], batch_size=batch_size, scales=scales)[0]

    @torch.no_grad()
    def encode_regions_batch(self, images: Sequence[torch.Tensor], boxes: Sequence[torch.Tensor], *,
                             batch_size: int = 128,
                             scales: Sequence[float] = REGION_SCALES) -> list[torch.Tensor]:
        """`encode_regions` over several images (of any sizes): lists of [3, H_i, W_i] and
        [N_i, 4] -> list of [N_i, D]. Crops of consecutive images share forward passes."""
        if len(images) != len(boxes):
            raise ValueError(f"{len(images)} images but {len(boxes)} box tensors")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        boxes = [torch.as_tensor(b, dtype=torch.float32).cpu() for b in boxes]
        for b in boxes:
            _check_boxes(b)  # fail before any work is done
        counts = [int(b.shape[0]) for b in boxes]
        dim = self.embed_dim
        # Work items: (image index, start, end) chunks of at most batch_size boxes, then
        # packed into forward passes of at most batch_size boxes (len(scales) x batch_size crops).
        outputs = [torch.empty((n, dim), dtype=torch.float32, device=self.device) for n in counts]
        pending: list[tuple[int, int, int, torch.Tensor]] = []
        pending_n = 0

        def flush() -> None:
            nonlocal pending, pending_n
            if not pending:
                return
            crops = torch.cat([c for *_, c in pending], dim=1)  # [len(scales), M, 3, S, S]
            k, m = crops.shape[:2]
            emb = F.normalize(self.model.encode_image(crops.reshape(k * m, *crops.shape[2:])).float(), dim=-1)
            emb = F.normalize(emb.view(k, m, -1).sum(0), dim=-1)
            offset = 0
            for i, s, e, _ in pending:
                outputs[i][s:e] = emb[offset:offset + e - s]
                offset += e - s
            pending, pending_n = [], 0

        for i, (image, b) in enumerate(zip(images, boxes)):
            if b.shape[0] == 0:
                continue
            for s in range(0, b.shape[0], batch_size):
                e = min(s + batch_size, b.shape[0])
                if pending_n + (e - s) > batch_size:
                    flush()
                pending.append((i, s, e, self.region_crops(image, b[s:e], scales)))
                pending_n += e - s
        flush()
        return outputs


def _check_image(image: torch.Tensor) -> torch.Tensor:
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a torch.Tensor [3, H, W] float 0..1, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be [3, H, W], got shape {tuple(image.shape)}")
    if not image.is_floating_point():
        raise ValueError(f"image must be float 0..1, got {image.dtype} (divide uint8 images by 255)")
    return image
