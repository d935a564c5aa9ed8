"""Data-parallel training and region embedding under torchrun (2 gloo processes on CPU)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from tests.training._cli import run_vild

STEPS = 3


def train_args(world, teacher, out, *extra):
    return ["train", "--world", str(world), "--teacher", str(teacher), "--preset", "shapeworld-quick",
            "--mode", "text", "--steps", str(STEPS), "--set", "batch_size=4", "--micro-batch-size", "2",
            "--set", "warmup_steps=1", "--set", "log_every=1", "--threads", "1", "--device", "cpu",
            "--no-progress", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def single_run(tiny_world, tiny_teacher_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    out = root / "single"
    run_vild(train_args(tiny_world, tiny_teacher_dir, out), root / "cache")
    return root, out


def metrics(folder):
    return [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]


def test_two_gloo_processes_match_one_process(tiny_world, tiny_teacher_dir, single_run):
    root, single = single_run
    out = root / "two"
    # each rank with a loader worker; the single process loads in its main process
    proc = run_vild(train_args(tiny_world, tiny_teacher_dir, out, "--workers", "1"), root / "cache", nproc=2)
    assert proc.stdout.count("model written to") == 1  # rank 0 alone reports
    a, b = load_file(str(single / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys()
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].numel())
    assert worst < 1e-5, worst
    # one log line per step (rank 0 only), same losses
    m1, m2 = metrics(single), metrics(out)
    assert [r["step"] for r in m2] == list(range(STEPS))
    for r1, r2 in zip(m1, m2):
        assert r1["loss"] == pytest.approx(r2["loss"], rel=1e-5, abs=1e-6)
    # rank 0 alone wrote files: no stray temp files, one resume-free finished folder
    assert not list(out.glob(".*"))


def test_sync_bn_two_processes(tiny_world, tiny_teacher_dir, single_run):
    root, _ = single_run
    out = root / "syncbn"
    run_vild(train_args(tiny_world, tiny_teacher_dir, out, "--sync-bn"), root / "cache", nproc=2)
    weights = load_file(str(out / "model.safetensors"))
    assert "backbone.body.bn1.running_mean" in weights  # a plain BatchNorm state dict
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    assert json.loads((out / "train_config.json").read_text())["sync_bn"] is True


def test_embed_regions_two_ranks_equal_one(tiny_world, tiny_teacher_dir, single_run):
    root, model = single_run
    common = ["embed-regions", "--model", str(model), "--teacher", str(tiny_teacher_dir),
              "--world", str(tiny_world), "--shard-size", "2", "--batch-size", "1",
              "--num-proposals", "20", "--threads", "1", "--device", "cpu", "--no-progress"]
    run_vild([*common, "--out", str(root / "regions1")], root / "cache")
    proc = run_vild([*common, "--workers", "1", "--out", str(root / "regions2")], root / "cache", nproc=2)
    assert proc.stdout.count("images embedded") == 1
    one, two = root / "regions1", root / "regions2"
    assert json.loads((one / "manifest.json").read_text()) == json.loads((two / "manifest.json").read_text())
    files1 = sorted(p.name for p in one.iterdir())
    files2 = sorted(p.name for p in two.iterdir())
    assert files1 == files2 == ["manifest.json"] + [f"shard-{k:05d}.safetensors" for k in range(3)]
    for name in files1:
        assert (one / name).read_bytes() == (two / name).read_bytes(), name


def _sync_bn_worker(rank: int, world: int, init: str, out: str) -> None:
    import torch.distributed as dist

    from vild.training.distributed import SyncBatchNorm

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        g = torch.Generator().manual_seed(0)
        full = torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64) * 3 + 1
        weight = torch.randn(3, generator=g, dtype=torch.float64)
        ref = torch.nn.BatchNorm2d(3).double()
        sync = SyncBatchNorm(3).double()
        with torch.no_grad():
            for m in (ref, sync):
                m.weight.copy_(weight)
        x_ref = full.clone().requires_grad_(True)
        y_ref = ref(x_ref)
        (y_ref * torch.arange(4.0, dtype=torch.float64)[:, None, None, None]).sum().backward()
        part = full[2 * rank: 2 * rank + 2].clone().requires_grad_(True)
        y = sync(part)
        (y * torch.arange(2.0 * rank, 2.0 * rank + 2, dtype=torch.float64)[:, None, None, None]).sum().backward()
        dist.all_reduce(sync.weight.grad)  # what DDP does with parameter gradients (sum)
        torch.testing.assert_close(y, y_ref[2 * rank: 2 * rank + 2])
        torch.testing.assert_close(part.grad, x_ref.grad[2 * rank: 2 * rank + 2])
        torch.testing.assert_close(sync.weight.grad, ref.weight.grad)
        torch.testing.assert_close(sync.running_mean, ref.running_mean)
        torch.testing.assert_close(sync.running_var, ref.running_var)
        sync.eval(), ref.eval()
        torch.testing.assert_close(sync(part), ref(part))
        with open(f"{out}.{rank}", "w") as f:
            f.write("ok")
    finally:
        dist.destroy_process_group()


def test_sync_batchnorm_equals_batchnorm_over_the_global_batch(tmp_path):
    import torch.multiprocessing as mp

    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_sync_bn_worker, args=(2, init, str(tmp_path / "ok")), nprocs=2, join=True)
    assert all(os.path.exists(tmp_path / f"ok.{r}") for r in range(2))


def test_distillation_head_scores_at_the_teachers_temperature(single_run, tiny_teacher_dir):
    """`vild train` saves the teacher's logit scale as the ViLD-image temperature (unless set)."""
    from vild.teacher import Teacher

    _, single = single_run
    saved = json.loads((single / "model_config.json").read_text())["image_temperature"]
    scale = Teacher.load(str(tiny_teacher_dir)).logit_scale
    assert scale == pytest.approx(1 / 0.07, rel=1e-4)  # open_clip's initial logit scale
    assert saved == pytest.approx(scale, rel=1e-6)
