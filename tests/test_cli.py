"""The CLI, called in-process as a user would call it."""

import json
import subprocess
import sys

from miso_bench.cli import main


def test_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "data" in out and "MISO_BENCH_HOME" in out
    assert main(["data", "synth", "--help"]) == 0
    assert "--preset" in capsys.readouterr().out


def test_help_does_not_import_heavy_libraries():
    code = (
        "import sys; from miso_bench.cli import build_parser; build_parser(); "
        "print(','.join(m for m in ('torch','torchgeo','geopandas','rasterio','mlflow') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_synth_info_check_round_trip(tmp_path, capsys):
    out = tmp_path / "ds"
    assert main(["data", "synth", "--preset", "tiny", "--seed", "2", "--out", str(out)]) == 0
    assert (out / "dataset.yaml").is_file()
    # Running it again keeps the existing dataset.
    assert main(["data", "synth", "--preset", "tiny", "--seed", "2", "--out", str(out)]) == 0
    assert "already holds a dataset" in capsys.readouterr().out
    assert main(["data", "check", str(out)]) == 0
    assert main(["data", "info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "sentinel2" in text and "EPSG:3338" in text and "Gelisols" in text
    assert "nearest neighbour has the same label" in text
    assert main(["data", "info", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["pedons"]["n"] == 480
    assert set(summary["pedons"]["tasks"]) == {"pf1m", "tax_order"}


def test_default_dataset_is_generated_when_absent(home, capsys, monkeypatch):
    import miso_bench.cli as cli

    calls = []
    real = cli._synth

    def small(preset, seed, target, force):
        calls.append(preset)
        return real("tiny", seed, target, force)  # keep the test fast: tiny in place of default

    monkeypatch.setattr(cli, "_synth", small)
    assert main(["data", "check"]) == 0
    assert calls == ["default"]
    assert (home / "data" / "synthetic-alaska-default-seed0" / "dataset.yaml").is_file()
    assert main(["data", "check"]) == 0 and calls == ["default"]  # not generated twice


def test_user_mistakes_get_one_line_errors(tmp_path, capsys):
    assert main(["data", "info", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "no dataset manifest found" in err and "Traceback" not in err
    assert main(["data", "synth", "--preset", "huge"]) == 2
    assert "invalid choice" in capsys.readouterr().err
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file.txt").write_text("x")
    assert main(["data", "synth", "--preset", "tiny", "--out", str(tmp_path / "junk")]) == 2
    assert "not a miso-bench dataset" in capsys.readouterr().err
