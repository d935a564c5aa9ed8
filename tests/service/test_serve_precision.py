"""`vild serve --precision` reaches the Detector the server runs (fp32 unless told)."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("argv, want", [([], "fp32"), (["--precision", "bf16"], "bf16")])
def test_serve_passes_precision_to_the_detector(monkeypatch, argv, want):
    import uvicorn

    from vild.cli import main
    from vild.inference import detector as detector_module

    seen = {}

    def fake_from_pretrained(name=None, **kwargs):
        seen.update(kwargs)
        raise SystemExit(0)  # stop before building the app and binding a port

    monkeypatch.setattr(detector_module.Detector, "from_pretrained", staticmethod(fake_from_pretrained))
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: None)
    monkeypatch.setattr("vild.service.cli.limit_malloc_arenas", lambda: None)  # not in the test process
    with pytest.raises(SystemExit):
        main(["serve", *argv])
    assert seen["precision"] == want


def test_serve_refuses_an_unknown_precision(capsys):
    from vild.cli import main

    with pytest.raises(SystemExit) as e:
        main(["serve", "--precision", "fp16"])
    assert e.value.code == 2 and "fp16" in capsys.readouterr().err
