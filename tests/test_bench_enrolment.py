"""`python -m bench.enrolment`: its table reads every part of the time from upload to serving."""

from __future__ import annotations

from bench.enrolment import WORKER_SPLIT, markdown


def test_the_table_shows_the_workers_split_the_gateways_load_and_why_training_stopped():
    worker = dict.fromkeys(WORKER_SPLIT, 1.0) | {"training_s": 61.5, "export_s": None}
    item = {
        "object": "disc", "kind": "base", "upload_and_ingest_s": 2.0, "worker": worker, "gateway_load_s": 0.7,
        "serving_s": 80.2, "training_steps": 300, "stop_reason": "converged", "worker_peak_rss_mb": 900,
        "quality": {"disc": {"i_auroc": 91.0, "p_auroc": None, "aupro": None}},
    }  # fmt: skip
    table = markdown({"train_pairs": {"disc": 16}, "size": "dataset", "enrolments": [item]})
    row = table.splitlines()[-1]
    assert "| 61.5 s |" in row and "| - |" in row  # no export when gateways serve PyTorch
    assert "| 0.7 s | **80.2 s** | 300 | converged | 900 MB | disc 91.0 / n/a / n/a |" in row
    assert row.count("|") == table.splitlines()[2].count("|")  # every column filled
