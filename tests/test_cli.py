"""The CLI, called in-process as a user would call it."""

import json
import signal
import subprocess
import sys

import pytest

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


def test_run_in_process_prints_results_by_region(tiny_dir, home, capsys):
    code = main(
        [
            "run",
            "--model",
            "rf",
            "--cv",
            "spatial",
            "--task",
            "tax_order",
            "--data",
            str(tiny_dir),
            "--set",
            "model.params.n_estimators=20",
            "--set",
            "eval.n_boot=50",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "macro_f1" in out and "95% CI" in out and "by mlra" in out and "by pf_zone" in out
    assert "truth" in out and "MLflow" in out
    assert (home / "mlflow.db").is_file()


def test_list_commands(capsys):
    for what, expected in (
        ("models", "coords_only"),
        ("cv", "knndm"),
        ("tasks", "pf1m"),
        ("metrics", "balanced_accuracy"),
    ):
        assert main(["list", what]) == 0
        assert expected in capsys.readouterr().out


def test_run_mistakes_are_one_line_errors(home, capsys, tmp_path):
    assert main(["run", "--model", "rff"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'rff'" in err and "Did you mean rf" in err and "Traceback" not in err
    assert main(["run", "--set", "cv.n_split=3"]) == 2
    assert "did you mean `cv.n_splits`" in capsys.readouterr().err
    assert main(["run", "--cv", "spatial", "--data", str(tmp_path)]) == 2
    assert "no dataset manifest found" in capsys.readouterr().err
    bad = tmp_path / "exp.yaml"
    bad.write_text("model: {nme: rf}\n")
    assert main(["run", "--config", str(bad)]) == 2
    assert "did you mean `model.name`" in capsys.readouterr().err


@pytest.mark.slow
def test_ui_serves_the_dashboard_on_localhost(home, tmp_path):
    import os
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MISO_BENCH_HOME": str(home)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "miso_bench.cli", "ui", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        status = None
        for _ in range(90):  # a bounded number of polls while the server starts
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    status = r.status
                break
            except OSError:
                time.sleep(1)
        assert status == 200
        server = _children(proc.pid)
        assert server, "mlflow server runs as a child process"
        proc.send_signal(signal.SIGTERM)  # what `kill` and batch schedulers send
        assert proc.wait(timeout=60) == 0
        for pid in server:  # the server and its workers stopped with the CLI
            assert not _alive(pid), pid
        with socket.socket() as s, pytest.raises(OSError):
            s.settimeout(2)
            s.connect(("127.0.0.1", port))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def _children(pid: int) -> list[int]:
    """Every process started by ``pid``, recursively (from /proc)."""
    from pathlib import Path

    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        kids = [p for p, pp in parents.items() if pp == parent]
        found += kids
        todo += kids
    return found


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting to be reaped)."""
    from pathlib import Path

    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_synth_argument_mistakes(tmp_path, capsys):
    assert main(["data", "synth", "--seed", "-1"]) == 2
    assert "must be 0 or more" in capsys.readouterr().err
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["data", "synth", "--preset", "tiny", "--out", str(afile)]) == 2
    assert "is a file" in capsys.readouterr().err


def test_synth_refuses_to_mix_presets_in_one_folder(tiny_dir, capsys):
    assert (
        main(["data", "synth", "--preset", "default", "--seed", "5", "--out", str(tiny_dir)]) == 2
    )
    assert "already holds preset 'tiny' seed 0" in capsys.readouterr().err


def test_info_on_a_broken_raster_is_a_one_line_error(tiny_copy, capsys):
    sorted((tiny_copy / "climate").glob("*.tif"))[0].write_bytes(b"not a tiff")
    assert main(["data", "info", str(tiny_copy)]) == 2
    err = capsys.readouterr().err
    assert "unreadable raster" in err and "data check" in err and "Traceback" not in err
