"""Continuing from a trained model (`vild train --init`): which model, which of its weights,
and the distillation targets its RPN proposes on the new images.

The classifier of a ViLD detector is the teacher's text embeddings, an input, not a weight:
no weight depends on the vocabulary, so a model trained on 24 categories continues on 16
others with every weight loaded. What can differ is the architecture: another --mode (a
ViLD-ensemble's distillation head is unused by a ViLD-text fine-tune, and a ViLD-text model
has none to give a ViLD-ensemble one) or a `--set` of a head's size. `initialise_from` copies
what matches by name and shape and says what it did not copy.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from vild.errors import VildError
from vild.training.checkpoint import MODEL_CONFIG, MODEL_WEIGHTS

REGIONS_DIR = "regions"  # the automatic region store, inside the output folder


@dataclass(frozen=True)
class InitReport:
    """What `initialise_from` did: weights copied, this model's weights left at their fresh
    initialisation (absent from the source or of another shape), and source weights unused."""

    source: str
    loaded: tuple[str, ...]
    fresh: tuple[str, ...]
    unused: tuple[str, ...]

    def summary(self) -> str:
        """One log line, with module groups rather than every tensor name."""
        line = f"init: {len(self.loaded)} weights loaded from {self.source}"
        if self.fresh:
            line += f"; {len(self.fresh)} fresh (not in it or another shape): {_groups(self.fresh)}"
        if self.unused:
            line += f"; {len(self.unused)} of its weights unused: {_groups(self.unused)}"
        return line


def _groups(names, depth: int = 2) -> str:
    """['roi_heads.image_head.body.1.weight', ...] -> 'roi_heads.image_head.*' (short lines)."""
    heads = dict.fromkeys(".".join(n.split(".")[:depth]) + ("*" if n.count(".") >= depth else "")
                          for n in names)
    return ", ".join(h.replace("*", ".*") for h in heads)


def initialise_from(model: torch.nn.Module, folder: str | Path, modules: tuple[str, ...] = ()) -> InitReport:
    """Copy every weight of a saved model whose name and shape match (under `modules`, if
    given) into `model`; -> InitReport."""
    from safetensors.torch import load_file

    path = Path(folder) / MODEL_WEIGHTS
    if not path.is_file():
        raise VildError(f"init_from: {path} not found")
    try:
        source = load_file(str(path))
    except Exception as e:  # noqa: BLE001 - truncated or not safetensors
        from vild.errors import one_line

        raise VildError(f"init_from: {path} is not a readable safetensors file ({one_line(e)})") from None
    own = model.state_dict()
    wanted = [k for k in own if not modules or any(k.startswith(m) for m in modules)]
    copied = {k: source[k] for k in wanted if k in source and source[k].shape == own[k].shape}
    if not copied:
        raise VildError(f"init_from: no weight of {path} fits this model")
    model.load_state_dict(copied, strict=False)
    return InitReport(
        source=str(folder),
        loaded=tuple(sorted(copied)),
        fresh=tuple(sorted(k for k in wanted if k not in copied)),
        unused=tuple(sorted(k for k in source if k not in copied
                            and (not modules or any(k.startswith(m) for m in modules)))),
    )


def check_init_folder(folder: str | Path, spec: str | None = None) -> Path:
    """--init's model folder (a registered name is resolved by the CLI, which alone knows the
    registry) -> Path; one error line when it is missing or incomplete."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise VildError(f"--init: {spec or folder} is neither a model folder nor a registered model name")
    missing = [f for f in (MODEL_CONFIG, MODEL_WEIGHTS) if not (folder / f).is_file()]
    if missing:
        raise VildError(f"--init: {folder} is not a trained model folder ({' and '.join(missing)} missing)")
    return folder


def init_model_config(folder: Path, overrides: dict, *, teacher_dim: int):
    """The init model's ViLDConfig with `overrides` (--mode, --set) applied; its embedding
    width must be the teacher's."""
    from vild.io import load_config
    from vild.model import ViLDConfig

    try:
        config = load_config(ViLDConfig, folder / MODEL_CONFIG)
    except (TypeError, ValueError) as e:
        raise VildError(f"--init: {folder / MODEL_CONFIG} is not a valid model config ({e})") from None
    dim = overrides.get("embed_dim", config.embed_dim)
    if teacher_dim != dim:
        raise VildError(
            f"--init model {folder} embeds regions in {dim} dimensions, the teacher in {teacher_dim}: "
            "give the teacher it was trained with")
    try:
        return dataclasses.replace(config, **overrides)
    except (TypeError, ValueError) as e:
        raise VildError(f"bad configuration: {e}") from None


def check_region_store(path: str | Path, teacher, embed_dim: int) -> None:
    """A --region-store must hold this teacher's embeddings at the model's width."""
    from vild.regions.store import RegionStore

    store = RegionStore(path)
    if store.embed_dim != embed_dim:
        raise VildError(f"--region-store {path} holds {store.embed_dim}-d embeddings, the model "
                        f"embeds in {embed_dim}")
    if store.teacher_identity != teacher.identity:
        raise VildError(f"--region-store {path} was made by teacher {store.teacher_identity}, "
                        f"not by --teacher ({teacher.identity})")


def build_region_store(init_folder: Path, images, annotations, teacher, out_dir: Path, *,
                       num_proposals: int, device, workers: int | None, progress: bool,
                       log=print) -> Path:
    """Teacher embeddings of the init model's RPN proposals on the training images, cached in
    OUT/regions (resumed, not recomputed, by a rerun); -> the store folder."""
    from vild.data.detection import DetectionDataset
    from vild.data.loading import resolve_workers
    from vild.regions.embed import embed_regions
    from vild.regions.store import sha256_file
    from vild.training.checkpoint import load_model

    store = Path(out_dir) / REGIONS_DIR
    dataset = DetectionDataset(images, annotations, with_masks=False)
    log(f"no --region-store: embedding the top {num_proposals} proposals of {init_folder}'s RPN "
        f"on {len(dataset)} images with the teacher into {store} (cached there for reruns)")
    embed_regions(
        dataset, load_model(init_folder, device=str(device)).propose, teacher, store,
        num_proposals=num_proposals, progress=progress,
        # the store is tied to the RPN that proposed: a rerun with another --init rebuilds it
        metadata={"rpn_model": sha256_file(init_folder / MODEL_WEIGHTS)[:16]},
        device=None if device.type == "cpu" else device,
        num_workers=resolve_workers(workers, device),
    )
    return store


def init_teacher_identity(folder: Path) -> str | None:
    """The identity of the teacher a model folder was trained with (detector.json, else
    vocabulary.json), or None when it does not say."""
    import json

    for name, get in (("detector.json", lambda d: d.get("teacher_identity")),
                      ("vocabulary.json", lambda d: (d.get("teacher") or {}).get("identity"))):
        try:
            value = get(json.loads((folder / name).read_text(encoding="utf-8")))
        except (OSError, ValueError, AttributeError):
            continue
        if value:
            return str(value)
    return None
