"""The talk's GloVe row on ShapeWorld-OV: ViLD-text with category embeddings learned from text alone.

    .venv/bin/python benchmarks/glove_baseline.py --world benchmarks/work/world \
        --work benchmarks/work/shapeworld --out benchmarks/results/glove_baseline.json

The paper's ViLD-text uses CLIP's text encoder; its GloVe baseline replaces the category
embeddings by word vectors that never saw an image (3.0 APr against ViLD-text's 10.1). Here the
word vectors are word2vec (gensim, skip-gram) trained on the world's web captions, the same text
the teacher learned from, but without the images. A category's embedding is the mean of its
names' (and synonyms') mean word vectors, L2-normalised. The row is trained and evaluated
exactly as `benchmarks/shapeworld.py`'s ViLD-text row (same trunk, steps and evaluation), with
these embeddings as its classifier, and it needs no teacher.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "src"))

import shapeworld as sw  # noqa: E402
from shapeworld_report import row_metrics  # noqa: E402
from vild.evaluation.run import evaluate_detector  # noqa: E402
from vild.io import save_json  # noqa: E402
from vild.training.checkpoint import load_model  # noqa: E402
from vild.training.vocabulary import dataset_vocabulary, vocabulary_entries, world_paths  # noqa: E402


def tokens(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower().replace("_", " "))


def word_vector_classifier(captions: list[str], entries: list[list[str]], dim: int, seed: int = 0,
                           epochs: int = 20) -> tuple[torch.Tensor, dict]:
    """[C, dim] L2-normalised category embeddings from word2vec trained on `captions` alone."""
    from gensim.models import Word2Vec

    sentences = [tokens(c) for c in captions]
    model = Word2Vec(sentences=sentences, vector_size=dim, window=5, min_count=1, sg=1,
                     epochs=epochs, seed=seed, workers=1)
    rows, missing = [], []
    for names in entries:
        per_name = []
        for name in names:
            words = [w for w in tokens(name) if w in model.wv]
            missing += [w for w in tokens(name) if w not in model.wv]
            if words:
                per_name.append(torch.nn.functional.normalize(
                    torch.tensor(model.wv[words]).mean(0), dim=0))
        if not per_name:
            raise SystemExit(f"no word of {names} occurs in the captions")
        rows.append(torch.stack(per_name).mean(0))
    emb = torch.nn.functional.normalize(torch.stack(rows), dim=-1)
    sim = emb @ emb.T
    off = sim[~torch.eye(len(sim), dtype=torch.bool)]
    return emb, {"vocabulary_size": len(model.wv), "words_missing": sorted(set(missing)),
                 "category_cosine_mean": round(float(off.mean()), 3)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--world", type=Path, required=True)
    p.add_argument("--work", type=Path, required=True, help="a shapeworld.py work folder with its trunk")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--row-steps", type=int, default=1000)
    p.add_argument("--dim", type=int, default=256, help="word-vector size (the detector's embed_dim)")
    p.add_argument("--val-images", type=int, default=250)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    paths = world_paths(args.world)
    vocab = dataset_vocabulary(paths["val"])
    captions = json.loads((args.world / "web" / "train_captions.json").read_text())
    glove, stats = word_vector_classifier(captions, vocabulary_entries(vocab), args.dim)
    novel_ids = [c for c, b in zip(vocab["category_ids"], vocab["base"]) if not b]
    base = torch.tensor(vocab["base"])
    row_args = argparse.Namespace(quick=args.quick, init_modules=[], freeze=["backbone", "rpn"],
                                  rfs_threshold=0.1, progress=False)
    per_seed = []
    for seed in range(args.seeds):
        out = args.work / f"seed{seed}" / "text-glove"
        sw.train_row(out, "text", seed=seed, args=row_args, world=args.world, vocab=vocab, text=glove,
                     init_from=args.work / "trunk", steps=None if args.quick else args.row_steps)
        result = evaluate_detector(load_model(out), paths["val_images"], paths["val"], glove,
                                   vocab["category_ids"], base_mask=base, novel_category_ids=novel_ids,
                                   progress=False, max_images=args.val_images or None)
        per_seed.append(row_metrics(result))
        print(f"seed {seed}: {per_seed[-1]}", flush=True)
    save_json(args.out, {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
        "loadavg_start": os.getloadavg(), "word_vectors": stats, "per_seed": per_seed,
        "seconds": round(time.perf_counter() - started, 1)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
