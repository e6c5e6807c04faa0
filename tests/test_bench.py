"""The grid runner: protocol parsing, skipping finished runs, resume after a kill, fail-fast."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from entk_al.errors import ConfigError, DataNotFoundError, StrategyError
from entk_al.fileio import read_jsonl
from entk_al.report.bench import BenchRunner, Protocol, derive_seed

TINY = """
name = "tiny"
strategies = ["random", "badge"]
seeds = 2
base_seed = 7

[run]
dataset = "digits"
width = 16
initial = 10
query = 5
rounds = 3
epochs = 1
min_steps = 5
device = "cpu"
"""


def write_protocol(tmp_path: Path, text: str = TINY) -> Path:
    path = tmp_path / "p.toml"
    path.write_text(text)
    return path


def outcome(run_dir: Path) -> list[tuple]:
    """What must match between runs: per round, labels, accuracy, queried ids, loss."""
    return [(r["n_labeled"], r["test_accuracy"], r["queried"], r["train_loss"])
            for r in read_jsonl(run_dir / "rounds.jsonl")]


def test_protocol_grid_and_seeds(tmp_path):
    proto = Protocol.from_file(write_protocol(tmp_path))
    specs = proto.grid()
    assert [s.name for s in specs] == ["random-q5-seed0", "badge-q5-seed0", "random-q5-seed1", "badge-q5-seed1"]
    # Paired design: every strategy gets the same seed at the same index, distinct across indices.
    assert specs[0].config.seed == specs[1].config.seed == derive_seed(7, 0)
    assert specs[2].config.seed == derive_seed(7, 1) != derive_seed(7, 0)
    assert derive_seed(8, 0) != derive_seed(7, 0)


def test_protocol_query_sizes(tmp_path):
    text = TINY.replace("query = 5\n", "").replace('seeds = 2', 'seeds = 1\nqueries = [3, 4]')
    specs = Protocol.from_file(write_protocol(tmp_path, text)).grid()
    assert [(s.config.strategy, s.config.query) for s in specs] == [
        ("random", 3), ("badge", 3), ("random", 4), ("badge", 4)]


@pytest.mark.parametrize("bad, match", [
    ('seeds = 2', "seeds = 0"),
    ('name = "tiny"', 'name = "tiny"\ncolour = "red"'),
    ('width = 16', 'width = 16\nseed = 3'),
    ('width = 16', 'width = 16\nepoch = 3'),
])
def test_protocol_errors(tmp_path, bad, match):
    with pytest.raises(ConfigError):
        Protocol.from_file(write_protocol(tmp_path, TINY.replace(bad, match)))


def test_runner_skips_finished_runs(tmp_path):
    proto = Protocol.from_file(write_protocol(tmp_path))
    out = tmp_path / "grid"
    first = BenchRunner(proto, out).run()
    assert set(first.values()) == {"new"}
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    rounds_run = []
    second = BenchRunner(proto, out).run(on_round=lambda spec, rec: rounds_run.append(spec.name))
    assert set(second.values()) == {"done"} and rounds_run == []
    assert stamps == {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


class Killed(Exception):
    pass


def test_resume_after_kill_is_identical(tmp_path):
    text = TINY.replace('"badge"]', '"badge", "lookahead"]').replace("seeds = 2", "seeds = 1")
    proto = Protocol.from_file(write_protocol(tmp_path, text))
    BenchRunner(proto, tmp_path / "whole").run()

    def kill(spec, rec):
        if spec.name.startswith("badge") and rec["round"] == 1:
            raise Killed  # after round 1's checkpoint: rounds 2..3 are left

    with pytest.raises(Killed):
        BenchRunner(proto, tmp_path / "killed").run(on_round=kill)
    assert len(read_jsonl(tmp_path / "killed" / "badge-q5-seed0" / "rounds.jsonl")) == 2
    states = BenchRunner(proto, tmp_path / "killed").run()
    assert states == {"random-q5-seed0": "done", "badge-q5-seed0": "partial", "lookahead-q5-seed0": "new"}
    for spec in proto.grid():
        assert outcome(tmp_path / "killed" / spec.name) == outcome(tmp_path / "whole" / spec.name)
        summary = json.loads((tmp_path / "killed" / spec.name / "summary.json").read_text())
        assert summary["rounds"] == 3 and summary["evaluations"] == 4


def test_missing_dataset_fails_fast_with_runs_message(tmp_path):
    from entk_al.data import load_dataset

    text = TINY.replace('dataset = "digits"', f'dataset = "mnist"\ndata_dir = "{tmp_path / "nowhere"}"')
    proto = Protocol.from_file(write_protocol(tmp_path, text))
    with pytest.raises(DataNotFoundError) as got:
        BenchRunner(proto, tmp_path / "grid").run()
    with pytest.raises(DataNotFoundError) as direct:
        load_dataset("mnist", str(tmp_path / "nowhere"))
    assert str(got.value) == str(direct.value)
    assert not (tmp_path / "grid").exists()


def test_changed_options_refuse_to_mix(tmp_path):
    proto = Protocol.from_file(write_protocol(tmp_path))
    BenchRunner(proto, tmp_path / "grid").run()
    changed = Protocol.from_file(write_protocol(tmp_path, TINY.replace("width = 16", "width = 8")))
    with pytest.raises(ConfigError, match="different options"):
        BenchRunner(changed, tmp_path / "grid").run()


def test_cli_bench_and_plot(tmp_path):
    from typer.testing import CliRunner

    from entk_al.cli import app

    runner = CliRunner()
    out = tmp_path / "grid"
    res = runner.invoke(app, ["bench", "--protocol", str(write_protocol(tmp_path)), "--out", str(out), "-q"])
    assert res.exit_code == 0, res.output
    for name in ("curves.png", "summary.csv", "penalty.png"):
        assert (out / name).read_bytes()[:4] in (b"\x89PNG", b"stra")
    for spec in Protocol.from_file(tmp_path / "p.toml").grid():
        assert {p.name for p in (out / spec.name).iterdir()} >= {
            "config.json", "rounds.jsonl", "curve.png", "checkpoint.pt", "summary.json"}
    res = runner.invoke(app, ["bench", "--protocol", str(tmp_path / "nope.toml")])
    assert res.exit_code != 0


def test_bench_shows_each_round_when_output_is_not_a_terminal(tmp_path, capsys):
    # Not a terminal (pytest captures): plain lines per run and round, not a rich bar.
    from entk_al.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["bench", "--protocol", str(write_protocol(tmp_path)), "--out", str(tmp_path / "g"), "--no-plot"])
    assert exc.value.code == 0
    err = capsys.readouterr().err
    for spec in Protocol.from_file(tmp_path / "p.toml").grid():
        assert f"{spec.name}: starting" in err
        assert f"{spec.name} round {spec.config.rounds}: " in err


VARIANTS = TINY.replace('strategies = ["random", "badge"]',
                        'strategies = ["random", "badge", "lookahead-flip"]') + """
[variants.lookahead-flip]
strategy = "lookahead"
acquisition = "flip"
exclude_self = true
"""


def test_variants_keep_the_grids_seeds_and_runs(tmp_path):
    plain = {s.name: s for s in Protocol.from_file(write_protocol(tmp_path)).grid()}
    specs = Protocol.from_file(write_protocol(tmp_path, VARIANTS)).grid()
    by_name = {s.name: s for s in specs}
    # Adding a variant changes no existing run: same folder names, same configs (seeds included).
    for name, spec in plain.items():
        assert by_name[name].config.to_dict() == spec.config.to_dict()
        assert by_name[name].label == spec.config.strategy
    flip = [s for s in specs if s.label == "lookahead-flip"]
    assert [s.name for s in flip] == ["lookahead_flip-q5-seed0", "lookahead_flip-q5-seed1"]
    for s in flip:
        assert s.config.strategy == "lookahead"
        assert s.config.strategy_options == {"acquisition": "flip", "exclude_self": True}
        assert s.config.seed == derive_seed(7, s.seed_index)


def test_variant_options_layer_over_base_options(tmp_path):
    text = VARIANTS + "\n[strategy_options.lookahead]\nridge_rel = 0.01\nacquisition = \"emoc\"\n"
    proto = Protocol.from_file(write_protocol(tmp_path, text))
    assert proto.options_for("lookahead-flip") == {"ridge_rel": 0.01, "acquisition": "flip", "exclude_self": True}


@pytest.mark.parametrize("old, new, error", [
    ('strategy = "lookahead"', 'strategy = "no_such_strategy"', StrategyError),
    ('acquisition = "flip"', 'acquisition = "nonsense"', StrategyError),
    ('acquisition = "flip"', 'acquisitoin = "flip"', StrategyError),
    ('exclude_self = true', 'exclude_self = "yes"', StrategyError),
    ('strategy = "lookahead"\n', '', ConfigError),
    ('"lookahead-flip"]', '"random-2"]', ConfigError),  # variant defined but not listed
    ('[variants.lookahead-flip]', '[variants.margin]', ConfigError),  # shadows a strategy
    ('"lookahead-flip"]', '"lookahead-flip", "lookahead_flip"]\n[variants.lookahead_flip]\nstrategy = "random"',
     ConfigError),  # two names, one run folder
    ('strategy = "lookahead"', 'strategy = "lookahead-flip"', ConfigError),  # variant of a variant
])
def test_variant_errors_before_any_run(tmp_path, old, new, error):
    text = VARIANTS.replace(old, new, 1)
    assert text != VARIANTS
    with pytest.raises(error):
        BenchRunner(Protocol.from_file(write_protocol(tmp_path, text)), tmp_path / "grid").run()
    assert not (tmp_path / "grid").exists()


def test_variant_run_equals_entk_al_run_and_plots_by_name(tmp_path):
    from typer.testing import CliRunner

    from entk_al.cli import app
    from entk_al.report.plot import load_runs, summary_rows

    text = VARIANTS.replace('"random", "badge", ', '"random", ').replace("seeds = 2", "seeds = 1")
    text = text.replace("rounds = 3", "rounds = 2\nsubset = 200")
    proto = Protocol.from_file(write_protocol(tmp_path, text))
    out = tmp_path / "grid"
    BenchRunner(proto, out).run()
    variant_dir = out / "lookahead_flip-q5-seed0"
    assert json.loads((variant_dir / "bench.json").read_text())["label"] == "lookahead-flip"

    single = tmp_path / "single"
    res = CliRunner().invoke(app, [
        "run", "--strategy", "lookahead", "--dataset", "digits", "--width", "16", "--initial", "10",
        "--query", "5", "--rounds", "2", "--subset", "200", "--epochs", "1", "--min-steps", "5",
        "--device", "cpu", "--seed", str(derive_seed(7, 0)), "--out", str(single),
        "-o", "acquisition=flip", "-o", "exclude_self=True"])
    assert res.exit_code == 0, res.output
    assert outcome(variant_dir) == outcome(single)
    assert len(outcome(single)) == 3

    # The plots group by the variant's name; a run made by `entk-al run` keeps its strategy's name.
    runs, unfinished = load_runs(out)
    assert unfinished == 0 and sorted(r.strategy for r in runs) == ["lookahead-flip", "random"]
    (out / "extra").mkdir()
    for f in ("config.json", "rounds.jsonl", "summary.json"):
        (out / "extra" / f).write_bytes((single / f).read_bytes())
    runs, _ = load_runs(out)
    assert sorted(r.strategy for r in runs) == ["lookahead", "lookahead-flip", "random"]
    means = {row["strategy"]: row for row in summary_rows(runs) if row["seed"] == "mean"}
    assert means["lookahead"]["aubc"] == means["lookahead-flip"]["aubc"]  # same run, two names
