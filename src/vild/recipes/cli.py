"""`vild recipe`: list, show, prepare and evaluate the real-dataset recipes (LVIS v1, COCO splits)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "recipe",
        help="real-dataset recipes: LVIS v1 (R50/R152-FPN) and COCO open-vocabulary 48/17, 65/15",
        description="Prepare LVIS v1 or COCO 2017 for a recipe, show its configuration, and "
        "evaluate a model with the recipe's metrics. The datasets are not downloaded: give the "
        "annotation files and the COCO image root (holding train2017/ and val2017/).",
    )
    sub = p.add_subparsers(dest="recipe_command", metavar="ACTION")
    sub.required = True
    sub.add_parser("list", help="the recipes").set_defaults(func=run_list)

    show = sub.add_parser("show", help="a recipe's full model and training configuration (JSON)")
    show.add_argument("name")
    show.set_defaults(func=run_show)

    prep = sub.add_parser(
        "prepare", help="check a dataset and write the recipe's annotation files",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="LVIS: --train-annotations lvis_v1_train.json --val-annotations "
        "lvis_v1_val.json. COCO splits: instances_train2017.json / instances_val2017.json. "
        "--images: the COCO 2017 root (train2017/, val2017/).",
    )
    prep.add_argument("name", help="recipe: lvis-r50, lvis-r152, coco-ov-48-17, coco-ov-65-15")
    prep.add_argument("--images", required=True, help="COCO 2017 image root")
    prep.add_argument("--train-annotations", required=True)
    prep.add_argument("--val-annotations", required=True)
    prep.add_argument("--out", required=True, help="folder for recipe.json and the annotation files")
    prep.add_argument("--allow-missing", action="store_true", help="drop images whose file is missing")
    prep.set_defaults(func=run_prepare)

    ev = sub.add_parser("eval", help="evaluate a model with the recipe's metrics")
    ev.add_argument("--prepared", required=True, help="folder written by vild recipe prepare")
    ev.add_argument("--model", required=True)
    ev.add_argument("--teacher", help="needed when the vocabulary differs from the model's")
    ev.add_argument("--max-images", type=int)
    ev.add_argument("--batch-size", type=int, default=4)
    ev.add_argument("--threads", type=int)
    ev.add_argument("--out", help="write the metrics here (json)")
    ev.add_argument("--no-progress", action="store_true")
    ev.set_defaults(func=run_eval)


def run_list(args) -> int:
    from vild.recipes import RECIPES

    for recipe in RECIPES.values():
        print(f"{recipe.name:15s} {recipe.description}")
    return 0


def run_show(args) -> int:
    import json

    from vild.io import config_to_dict
    from vild.recipes import get_recipe, recipe_configs

    recipe = get_recipe(args.name)
    model, train = recipe_configs(args.name)
    print(json.dumps({"recipe": recipe.name, "dataset": recipe.dataset, "preset": recipe.preset,
                      "model": config_to_dict(model), "train": config_to_dict(train)}, indent=2))
    return 0


def run_prepare(args) -> int:
    from vild.recipes import prepare_recipe

    info = prepare_recipe(args.name, images=args.images, train_annotations=args.train_annotations,
                          val_annotations=args.val_annotations, out=args.out,
                          allow_missing=args.allow_missing)
    print(f"{info['recipe']}: {info['num_train_images']} training and {info['num_val_images']} "
          f"validation images, {len(info['base_category_ids'])} base and "
          f"{len(info['novel_category_ids'])} novel categories -> {args.out}")
    print("next:")
    for command in info["commands"]:
        print(f"  {command}")
    return 0


def run_eval(args) -> int:
    import json

    import torch

    from vild.io import save_json
    from vild.recipes import evaluate_recipe

    if args.threads:
        torch.set_num_threads(args.threads)
    teacher = None
    if args.teacher:
        from vild.teacher import Teacher

        teacher = Teacher.load(args.teacher)
    metrics = evaluate_recipe(args.prepared, args.model, teacher=teacher, max_images=args.max_images,
                              batch_size=args.batch_size, progress=not args.no_progress)
    if args.out:
        save_json(args.out, metrics)
    print(json.dumps({k: v for k, v in metrics.items() if k != "timing"}, indent=2))
    return 0
