import pytest


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    from vild.data.world import make_world

    out = tmp_path_factory.mktemp("world") / "w"
    make_world(out, num_train=6, num_val=3, num_web=1, num_web_val=1, progress=False, workers=1)
    return out
