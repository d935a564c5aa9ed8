"""The third-party APIs print to stdout and log warnings; the evaluators must stay silent."""

from vild.evaluation import evaluate_coco, evaluate_lvis, proposal_recall


def test_evaluators_print_nothing(gt, gt_path, make_results, capfd):
    res = make_results(gt)
    evaluate_lvis(gt_path, res)
    evaluate_lvis(gt, [])
    evaluate_coco(gt_path, res)
    evaluate_coco(gt, [])
    proposal_recall(gt, {1: ([[0.0, 0.0, 5.0, 5.0]], [1.0])})
    out, err = capfd.readouterr()
    assert out == ""
    assert err == ""


def test_lvis_import_leaves_root_logging_alone():
    import logging
    import subprocess
    import sys

    code = (
        "import logging; from vild.evaluation.lvis_eval import load_lvis_gt;"
        "from vild.evaluation.lvis_eval import _import_lvis; _import_lvis();"
        "print(len(logging.getLogger().handlers), logging.getLogger().level)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", str(logging.WARNING)]
