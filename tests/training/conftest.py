import pytest


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    from vild.data.world import make_world

    out = tmp_path_factory.mktemp("world") / "w"
    make_world(out, num_train=6, num_val=3, num_web=1, num_web_val=1, progress=False, workers=1)
    return out


def _saved_teacher(tmp_path_factory, vision_cfg: dict, name: str):
    """A tiny random open_clip teacher (16-d) saved as a folder (what `--teacher` takes)."""
    import torch

    from vild.teacher import Teacher, create_clip

    cfg = {"embed_dim": 16, "vision_cfg": vision_cfg,
           "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    torch.manual_seed(0)
    model, tokenizer, cfg = create_clip(cfg)
    teacher = Teacher(model, tokenizer, image_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                      model_cfg=cfg, name=name)
    path = tmp_path_factory.mktemp("teacher") / "t"
    teacher.save(path)
    return path


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory):
    """A ViT-towered teacher."""
    return _saved_teacher(tmp_path_factory, {"image_size": 32, "layers": 1, "width": 32, "head_width": 16,
                                             "patch_size": 8}, "tiny")


@pytest.fixture(scope="session")
def cnn_teacher_dir(tmp_path_factory):
    """A teacher whose image tower is the ShapeWorld CNN (a timm model with a feature map)."""
    return _saved_teacher(tmp_path_factory, {"image_size": 32, "timm_model_name": "vild_shapeworld_cnn",
                                             "timm_model_pretrained": False, "timm_pool": "avg",
                                             "timm_proj": "linear"}, "tiny-cnn")
