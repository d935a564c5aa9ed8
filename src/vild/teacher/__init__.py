"""The CLIP-like teacher: loading any open_clip model, region crops, training on ShapeWorld-OV.

    from vild.teacher import Teacher
    teacher = Teacher.load("runs/teacher" | "hf-hub:org/repo" | "ViT-B-32:openai")

Importing this package is light (no torch); the names below load their module on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = [
    "Teacher",
    "weights_identity",
    "save_teacher_folder",
    "expand_boxes",
    "region_boxes",
    "crop_and_resize",
    "ARCH_NAME",
    "register",
    "create_clip",
    "TeacherTrainConfig",
    "train_teacher",
    "load_web_corpus",
]

_WHERE = {
    "Teacher": "teacher",
    "weights_identity": "folder",
    "save_teacher_folder": "folder",
    "expand_boxes": "crops",
    "region_boxes": "crops",
    "crop_and_resize": "crops",
    "ARCH_NAME": "arch",
    "register": "arch",
    "create_clip": "arch",
    "TeacherTrainConfig": "config",
    "train_teacher": "train",
    "load_web_corpus": "corpus",
}

if TYPE_CHECKING:  # pragma: no cover
    from vild.teacher.arch import ARCH_NAME, create_clip, register
    from vild.teacher.crops import crop_and_resize, expand_boxes, region_boxes
    from vild.teacher.folder import save_teacher_folder, weights_identity
    from vild.teacher.teacher import Teacher
    from vild.teacher.config import TeacherTrainConfig
    from vild.teacher.corpus import load_web_corpus
    from vild.teacher.train import train_teacher


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        module = importlib.import_module(f"vild.teacher.{_WHERE[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'vild.teacher' has no attribute {name!r}")
