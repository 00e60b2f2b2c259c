"""`python -m bench.real_quality`: ours (as enrolments learn) against PatchCore, over seeds."""

from __future__ import annotations

import json

import pytest

from bench.real_quality import Spread, main, markdown


def test_a_spread_says_its_mean_and_range_and_na_when_absent():
    assert Spread((80.0, 84.0, 82.0)).text() == "82.0 (80.0-84.0)"
    assert Spread((91.25,)).text() == "91.2"
    assert Spread(()).text() == "n/a" and Spread(()).mean is None


def test_the_table_puts_ours_beside_patchcore_with_the_difference():
    ours = {"a": {"i_auroc": Spread((90.0, 92.0)), "p_auroc": Spread(()), "aupro": Spread(())}}
    theirs = {"a": {"i_auroc": Spread((88.0,)), "p_auroc": Spread(()), "aupro": Spread(())}}
    table = markdown(ours, theirs, "header")
    assert "| a | 91.0 (90.0-92.0) | 88.0 | +3.0 | n/a | n/a | n/a | n/a |" in table
    assert "ours 91.0, PatchCore 88.0" in table


@pytest.mark.timeout(300)
def test_one_seed_on_tiny_synthetic_objects_end_to_end(synthetic_root, tmp_path, capsys):
    out = tmp_path / "out"
    arguments = ["--data", str(synthetic_root), "--objects", "disc,ring", "--seeds", "0", "--minutes", "0.02"]
    assert main([*arguments, "--image-size", "64", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert [list(run["final"]) for run in report["ours"]] == [["disc", "ring"]]
    assert report["ours"][0]["fm"] is not None and len(report["patchcore"]) == 1
    assert "| disc |" in (out / "table.md").read_text()
    # a second run with the same PatchCore settings reuses its banks' results
    assert main([*arguments, "--image-size", "64", "--out", str(out)]) == 0


def test_bad_options_stop_before_any_work(synthetic_root, capsys):
    for bad, message in (
        (["--minutes", "0"], "--minutes must be positive"),
        (["--seeds", "a"], "seeds must be"),
    ):
        with pytest.raises(SystemExit) as stop:
            main(["--data", str(synthetic_root), *bad])
        assert stop.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main(["--data", str(synthetic_root), "--config", '{"map_stride": 5}'])
    assert stop.value.code == 2 and "map_stride must be one of 8, 16" in capsys.readouterr().err


@pytest.mark.parametrize(
    "arguments,message",
    [
        (["--objects", "nope"], "unknown object 'nope'"),
        (["--over-http", "nope"], "unknown object 'nope'"),
        (["--stream", "0"], "--stream must be at least 1"),
    ],
)
def test_the_refinement_benchmark_refuses_bad_arguments_with_exit_2(
    synthetic_root, capsys, arguments, message
):
    from bench.refinement import main as refinement_main

    with pytest.raises(SystemExit) as stop:
        refinement_main(["--data", str(synthetic_root), *arguments])
    assert stop.value.code == 2 and message in capsys.readouterr().err
