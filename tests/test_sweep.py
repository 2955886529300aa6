"""Tests of ``vlae sweep``: the grid, the receptive-field columns, the parallel
and resumable runner, the tables and plots, ``--report`` and bad input.

The runs are the ``tiny`` preset trained for two steps on 96 synthetic binary
images and evaluated with k=2 on 12 images (in-memory data via ``data=``), each
in its own spawned process, two at a time; the module takes ~20 s on one core.
"""

from __future__ import annotations

import csv
import json

import pytest
import torch

from vlae.config import get_preset
from vlae.errors import VLAEError
from vlae.model import VLAE
from vlae.pixelcnn import GatedPixelCNN, MaskedPixelCNN
from vlae.sweep import (
    base_config,
    collect_results,
    context_coverage,
    main,
    parse_list,
    receptive_field_record,
    run_sweep,
    scope_note,
    sweep_tasks,
)

torch.set_num_threads(1)

GRID = {"layers": [1, 3], "kernels": [3], "priors": ["gaussian", "af"]}
OUTPUTS = ["sweep.csv", "sweep.json", "sweep.md", "sweep_config.json", "kl_vs_receptive_field.png",
           "nll_vs_receptive_field.png"]


def synthetic(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 28, 28, generator=g) < 0.2).to(torch.uint8)


def sweep(out, **kwargs):
    base = base_config("tiny", ["train.eval_subset=16"], None, 2)
    args = dict(GRID, eval_subset=12, k=2, jobs=2, threads=1, data=(synthetic(96, 0), synthetic(16, 1)),
                test_images=synthetic(12, 2), log=lambda _m: None)
    args.update(kwargs)
    return run_sweep(out, base, **args)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2x2 sweep (layers {1, 3} x priors {gaussian, af})."""
    out = tmp_path_factory.mktemp("sweep")
    records, status = sweep(out)
    return out, records, status


# ----------------------------------------------------------------------------- the runs


def test_grid_runs_in_parallel_and_writes_every_output(finished):
    out, records, status = finished
    assert status["failed"] == {}
    assert sorted(status["ran"]) == sorted(["masked-L1-k3-gaussian", "masked-L3-k3-gaussian", "masked-L1-k3-af",
                                            "masked-L3-k3-af"])
    for name in OUTPUTS:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for name in status["ran"]:
        stored = json.loads((out / name / "results.json").read_text())
        assert stored["config"]["model"]["decoder_layers"] == stored["layers"]
        assert stored["steps"] == 2 and stored["k"] == 2 and stored["eval_images"] == 12
    assert json.loads((out / "sweep_config.json").read_text())["runs"] == [r["name"] for r in records]
    assert {r["budget"] for r in records} == {"1 epoch or 2 steps"}  # the table states its one budget
    assert "Training budget per run: 1 epoch or 2 steps." in (out / "sweep.md").read_text()


def test_table_has_one_row_per_grid_point_sorted_by_prior_then_receptive_field(finished):
    out, records, _ = finished
    rows = list(csv.DictReader(open(out / "sweep.csv")))
    assert [(r["prior"], int(r["layers"])) for r in rows] == [("af", 1), ("af", 3), ("gaussian", 1), ("gaussian", 3)]
    for r in rows:
        assert float(r["nll"]) > 0 and float(r["nelbo"]) > 0 and r["kl"] != ""
        # the IW bound (k=2) is at least as tight as the single-sample ELBO on average -- up to sampling noise
        assert float(r["nll"]) == pytest.approx(-float(r["elbo"]), rel=0.2)
    md = (out / "sweep.md").read_text().splitlines()
    table = [line for line in md if line.startswith("| ") and "---" not in line]
    assert len(table) == 1 + 4 and "KL (nats)" in table[0] and "k=2" in table[0]
    assert [line.split("|")[1].strip() for line in table[1:]] == ["af", "af", "gaussian", "gaussian"]
    assert json.loads((out / "sweep.json").read_text())["runs"] == rows_as_json(rows, out)


def rows_as_json(rows, out):
    by_name = {r["name"]: r for r in json.loads((out / "sweep.json").read_text())["runs"]}
    return [by_name[r["name"]] for r in rows]


def test_receptive_field_columns_match_the_decoders(finished):
    _, records, _ = finished
    for r in records:
        cfg = get_preset("tiny")
        cfg.model.decoder_layers, cfg.model.decoder_kernel, cfg.model.prior = r["layers"], r["kernel"], r["prior"]
        dec = VLAE(cfg.model).decoder
        ext = dec.receptive_field_extent()
        assert (r["rf_size"], r["rf_up"], r["rf_left"], r["rf_right"]) == (
            dec.receptive_field_size(), ext["up"], ext["left"], ext["right"])
    assert {r["layers"]: r["rf_size"] for r in records} == {1: 4, 3: 21}  # a 3x3 type-A mask; then +2 rows of 3x3 B


def test_rerun_skips_finished_runs(finished):
    out, records, _ = finished
    stamps = {r["name"]: (out / r["name"] / "results.json").stat().st_mtime_ns for r in records}
    again, status = sweep(out)
    assert status["ran"] == [] and sorted(status["skipped"]) == sorted(stamps)
    assert {r["name"]: (out / r["name"] / "results.json").stat().st_mtime_ns for r in again} == stamps
    assert again == records


def test_report_regenerates_tables_and_plots(finished):
    out, records, _ = finished
    before = (out / "sweep.csv").read_text()
    for name in ("sweep.csv", "sweep.json", "sweep.md", "kl_vs_receptive_field.png", "nll_vs_receptive_field.png"):
        (out / name).unlink()
    assert main(["--report", str(out)]) == 0
    assert (out / "sweep.csv").read_text() == before
    assert (out / "kl_vs_receptive_field.png").stat().st_size > 0


def test_interrupted_run_resumes_from_its_checkpoint(tmp_path):
    out = tmp_path / "sweep"
    _, first = sweep(out, layers=[1], priors=["af"], jobs=1)
    name = "masked-L1-k3-af"
    kept = json.loads((out / name / "results.json").read_text())
    (out / name / "results.json").unlink()  # as if killed between training and evaluation
    records, status = sweep(out, layers=[1], priors=["af"], jobs=1)
    assert status["ran"] == [name] and records[0]["resumed"] is True
    assert records[0]["steps"] == 2  # resumed at its last step, not retrained
    assert records[0]["kl"] == pytest.approx(kept["kl"], rel=1e-5)


def test_changed_configuration_is_refused(finished, tmp_path):
    out, _, _ = finished
    base = base_config("tiny", ["train.eval_subset=16", "train.lr=0.01"], None, 2)
    with pytest.raises(VLAEError, match="different configuration.*train.lr"):
        run_sweep(out, base, **GRID, eval_subset=12, k=2, jobs=1, test_images=synthetic(12, 2),
                  log=lambda _m: None)


def test_an_interrupted_run_of_another_budget_is_refused_before_anything_is_written(finished, tmp_path):
    """A run stopped at step 2 of a 2-step budget is never finished with another budget: its
    result would sit beside runs of that budget (the issue's 192-step run among 150-step ones)."""
    import shutil

    out, _, _ = finished
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    for run in copy.glob("*/results.json"):
        run.unlink()  # as if every run was stopped before its evaluation
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    base = base_config("tiny", ["train.eval_subset=16"], None, 3)
    with pytest.raises(VLAEError, match="masked-L1-k3-gaussian was interrupted at step 2 of a run with other "
                                        r"settings \(train.max_steps: 2 -> 3\)"):
        run_sweep(copy, base, **GRID, eval_subset=12, k=2, jobs=1, test_images=synthetic(12, 2), log=lambda _m: None)
    assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before


def test_a_failed_run_is_reported_with_its_traceback_and_the_others_go_on(tmp_path):
    from vlae.sweep import run_tasks

    tasks = sweep_tasks(base_config("tiny", ["train.eval_subset=16"], None, 2), "masked", [1], [3], ["af"])
    wrong = (torch.zeros(8, 3, 16, 16, dtype=torch.uint8),) * 2  # colour images for a binary model
    records, status = run_tasks(tasks, tmp_path, eval_subset=4, k=2, jobs=1, data=wrong,
                                test_images=synthetic(4, 2), log=lambda _m: None)
    assert records == [None] and status["ran"] == [] and list(status["failed"]) == ["masked-L1-k3-af"]
    assert "the model observes binary images of 1x28x28" in status["failed"]["masked-L1-k3-af"]
    detail = (tmp_path / "masked-L1-k3-af" / "error.txt").read_text()
    assert "Traceback" in detail and "VLAEError" in detail


def test_a_table_holds_runs_of_one_setting(finished, tmp_path, capsys):
    """Another grid of another budget into the same folder, or a folder already mixed: refused."""
    import shutil

    out, _, _ = finished
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    base = base_config("tiny", ["train.eval_subset=16"], None, 3)
    with pytest.raises(VLAEError, match="was made with a different configuration \\(train.max_steps: 2 -> 3\\); "
                                        "a table holds runs of one setting"):
        run_sweep(copy, base, layers=[5], kernels=[3], priors=["af"], eval_subset=12, k=2, jobs=1,
                  test_images=synthetic(12, 2), log=lambda _m: None)
    assert not (copy / "masked-L5-k3-af").exists()
    stored = json.loads((copy / "masked-L3-k3-af" / "results.json").read_text())
    stored["config"]["train"]["max_steps"] = 150
    (copy / "masked-L3-k3-af" / "results.json").write_text(json.dumps(stored))
    table = (copy / "sweep.md").read_bytes()
    assert main(["--report", str(copy)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "train.max_steps" in err and "one setting" in err
    assert (copy / "sweep.md").read_bytes() == table


# ----------------------------------------------------------------------------- bad input, pure functions


@pytest.mark.parametrize("argv, message", [
    (["--kernels", "3,4"], "--kernels"),
    (["--layers", "0,2"], "--layers"),
    (["--layers", "two"], "--layers"),
    (["--priors", "gaussian,vamp"], "--priors"),
    (["--layers", ""], "--layers"),
    (["--set", "model.latent_dim=0"], "latent_dim"),
    (["--set", "model.nope=1"], "model.nope"),
    (["--budget", "-5"], "--budget"),
    (["--jobs", "-1"], "--jobs"),
    (["--k", "0"], "--k"),
    (["--report", "/nonexistent/sweep"], "/nonexistent/sweep"),
    (["--preset", "cifar-small", "--fields", "4x3"], "--fields"),
    (["--preset", "cifar-small", "--fields", "7x4,x4"], "--fields"),
])
def test_bad_input_is_a_one_line_error_with_status_2(argv, message, capsys, tmp_path):
    assert main(["--out", str(tmp_path / "never"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "never").exists()  # nothing trained, nothing written


def test_sweep_tasks_validate_the_grid():
    base = get_preset("tiny")
    with pytest.raises(VLAEError, match="--kernels"):
        sweep_tasks(base, "masked", [2], [5, 2], ["af"])
    with pytest.raises(VLAEError, match="--decoder"):
        sweep_tasks(base, "factorized", [2], [3], ["af"])
    tasks = sweep_tasks(base, "gated", [2, 4], [3, 5], ["gaussian", "af"])
    assert len(tasks) == 8 and len({t.name for t in tasks}) == 8
    assert {(t.config.model.decoder_layers, t.config.model.decoder_kernel, t.config.model.prior) for t in tasks} == {
        (n, k, p) for n in (2, 4) for k in (3, 5) for p in ("gaussian", "af")}
    assert all(t.config.model.decoder == "gated" for t in tasks)
    assert base.model.decoder_layers == 2 and base.model.decoder == "masked"  # the base is not modified


def test_parse_list():
    assert parse_list("1, 2,4,2", "--layers") == [1, 2, 4]
    assert parse_list("af,gaussian", "--priors", str) == ["af", "gaussian"]


def test_context_coverage_bounds():
    causal = {(dy, dx) for dy in range(-27, 1) for dx in range(-27, 28) if dy < 0 or dx < 0}
    assert context_coverage(causal) == pytest.approx(1.0)
    assert context_coverage(set()) == 0.0
    # the left neighbour alone, on a 2x2 image: pixel (0,1) sees 1 of 1 preceding pixels,
    # (1,0) none of 2 (its neighbour is outside), (1,1) 1 of 3
    assert context_coverage({(0, -1)}, 2, 2) == pytest.approx((1 + 0 + 1 / 3) / 3)


def test_receptive_field_record_of_gated_and_masked():
    gated = receptive_field_record(GatedPixelCNN(layers=28, kernel_size=3, filters=4, cond_channels=0))
    masked = receptive_field_record(MaskedPixelCNN(layers=28, kernel_size=3, filters=4, cond_channels=0))
    assert gated["rf_coverage"] == pytest.approx(1.0)  # no blind spot: the whole causal context
    assert masked["rf_coverage"] < 1.0  # the blind spot up and to the right
    assert gated["rf_up"] == masked["rf_up"] == 28
    # a field reaching past the image's edges (30 columns each way) still covers exactly the whole context
    wide = receptive_field_record(GatedPixelCNN(layers=10, kernel_size=7, filters=4, cond_channels=0))
    assert wide["rf_left"] == 30 and wide["rf_coverage"] == pytest.approx(1.0)


def test_collect_results_of_an_empty_folder(tmp_path):
    assert collect_results(tmp_path) == []
    assert main(["--report", str(tmp_path)]) == 2


def test_scope_note_names_every_free_bits_value_and_image_count():
    records = [{"free_bits": 0.01, "eval_images": 10, "budget": "150 steps"}, {"free_bits": 0.0, "eval_images": 10},
               {"eval_images": 20}]
    assert scope_note(records) == ("Training budget per run: 150 steps. Free bits: 0.0, 0.01 nats per pixel. "
                                   "Nats per image on 10, 20 test images")
    assert scope_note([]) == ("Training budget per run: ?. Free bits: ? nats per pixel. "
                              "Nats per image on ? test images")


# ----------------------------------------------------------------------------- colour: the paper's AxB grid

COLOUR = ["model.image_shape=3,16,16", "model.latent_shape=2,4,4", "model.latent_dim=32", "model.stage_channels=8,8,8",
          "model.decoder_filters=8", "model.cond_channels=4", "model.prior_hidden=8", "model.flow_steps=1",
          "model.mixture_components=2", "model.free_bits_groups=2", "train.batch_size=8", "train.eval_subset=8"]


def colour(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 16, 16), generator=g, dtype=torch.uint8)


def test_field_grid_validates_and_names_the_runs():
    base = base_config("cifar-small", COLOUR, None, 2)
    tasks = sweep_tasks(base, "masked", [1], [3], ["gaussian", "af"], fields=["4x2", "5x3", "7x4", "9x5"])
    assert [t.name for t in tasks][:4] == ["gated-4x2-gaussian", "gated-5x3-gaussian", "gated-7x4-gaussian",
                                           "gated-9x5-gaussian"]
    assert all(t.config.model.decoder == "gated" and t.meta["field"] == t.config.model.decoder_field for t in tasks)
    for t in tasks:  # each run's decoder really has the field it is named after
        assert VLAE(t.config.model).decoder.receptive_field_name() == t.config.model.decoder_field
    with pytest.raises(VLAEError, match="--fields"):
        sweep_tasks(base, "gated", [1], [3], ["af"], fields=["6x2"])


def test_colour_sweep_over_fields_records_the_axb_name(tmp_path):
    """Two colour runs (fields 4x2 and 9x5, two steps each) on random 8-bit images:
    the records, the table and the CSV carry each run's AxB field and its IW bound."""
    base = base_config("cifar-small", COLOUR, None, 2)
    records, status = run_sweep(tmp_path, base, fields=["4x2", "9x5"], priors=["af"], eval_subset=4, k=2,
                                eval_batch_size=4, jobs=2, threads=1, data=(colour(16, 0), colour(8, 1)),
                                test_images=colour(4, 2), log=lambda _m: None)
    assert status["failed"] == {} and sorted(status["ran"]) == ["gated-4x2-af", "gated-9x5-af"]
    assert [r["rf_name"] for r in records] == ["4x2", "9x5"] == [r["field"] for r in records]
    assert records[0]["rf_size"] < records[1]["rf_size"]
    for r in records:
        assert r["eval_images"] == 4 and r["k"] == 2 and r["steps"] == 2
        assert 0 < r["bits_per_dim"] < 20 and r["nll"] > 0  # 8-bit: nats over 3*16*16 dimensions
    rows = list(csv.DictReader(open(tmp_path / "sweep.csv")))
    assert [row["rf_name"] for row in rows] == ["4x2", "9x5"]
    assert "field AxB" in (tmp_path / "sweep.md").read_text()
