"""Runtime settings from one place for every heavy command, the bf16-on-this-CPU warning, bench's
interleaved timing, and progress: the models cost cache, export's stages, --quiet."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from efficientdet import cli, runtime
from efficientdet.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------ runtime settings
def test_every_heavy_command_lets_idle_openmp_threads_sleep(monkeypatch, capsys):
    """cli.main applies the runtime settings before parsing (so before any work) for each heavy
    command, and only for those."""
    for words in (
        ["train"],
        ["val"],
        ["predict"],
        ["bench"],
        ["export"],
        ["demo"],
        ["data", "check"],
        ["models"],
    ):
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
        with pytest.raises(SystemExit):
            cli.main([*words, "--help"])
        expected = None if words == ["models"] else "PASSIVE"
        assert os.environ.get("OMP_WAIT_POLICY") == expected, words
    capsys.readouterr()
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # a user's own setting wins
    with pytest.raises(SystemExit):
        cli.main(["predict", "--help"])
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_bf16_warning_states_the_measured_cost():
    cpu = torch.device("cpu")
    message = runtime.precision_warning("bf16", cpu, flags={"avx2"}, measure=lambda: 6.84)
    assert message == (
        "warning: bf16 runs 6.8x slower than fp32 on this CPU (no AVX512-BF16/AMX); "
        "use --precision fp32"
    )
    assert (
        runtime.precision_warning("bf16", cpu, flags={"avx2", "avx512_bf16"}, measure=lambda: 6.8)
        is None
    )
    assert runtime.precision_warning("bf16", cpu, flags={"amx_bf16"}, measure=lambda: 6.8) is None
    assert (
        runtime.precision_warning("bf16", cpu, flags=set(), measure=lambda: 1.1) is None
    )  # not slower
    assert runtime.precision_warning("fp32", cpu, flags=set(), measure=lambda: 6.8) is None
    assert (
        runtime.precision_warning("bf16", torch.device("cuda", 0), flags=set(), measure=lambda: 6.8)
        is None
    )


def test_bf16_slowdown_is_measured_on_this_cpu():
    slowdown = runtime.measure_bf16_slowdown()
    assert math.isfinite(slowdown) and slowdown > 0
    flags = runtime.cpu_flags()
    if os.path.exists("/proc/cpuinfo"):
        assert "fpu" in flags or "sse2" in flags  # every x86-64 /proc/cpuinfo lists these


def test_predict_warns_about_bf16_on_a_cpu_without_native_support(tmp_path, monkeypatch, capsys):
    from PIL import Image

    from efficientdet import create_model
    from efficientdet.factory import save_model_dict

    model = create_model("efficientdet_lite0", num_classes=2, image_size=64).eval()
    weights = tmp_path / "m.pt"
    torch.save(save_model_dict(model, ["a", "b"]), weights)
    Image.new("RGB", (64, 48), (90, 120, 30)).save(tmp_path / "x.png")
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx2"})
    monkeypatch.setattr(runtime, "measure_bf16_slowdown", lambda: 7.25)
    common = [
        "predict",
        "--weights",
        str(weights),
        "--source",
        str(tmp_path / "x.png"),
        "--device",
        "cpu",
        "--no-save",
    ]
    assert main([*common, "--precision", "bf16", "--out", str(tmp_path / "bf16")]) == 0
    assert "warning: bf16 runs 7.2x slower than fp32 on this CPU" in capsys.readouterr().err
    assert main([*common, "--out", str(tmp_path / "fp32")]) == 0
    assert "slower than fp32" not in capsys.readouterr().err
    assert main([*common, "--precision", "fp16", "--out", str(tmp_path / "fp16")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--precision fp16 on cpu" in err[0]


# ------------------------------------------------------------------ bench timing
class FakeClock:
    """A virtual perf_counter: each call of a part advances it by the part's cost at that moment."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


def test_bench_times_parts_in_interleaved_rounds(monkeypatch):
    """The machine gets less busy as the run goes on (each call 0.3 ms cheaper than the one
    before). Timed one after the other, the network (timed first) would look slower than
    end_to_end = network + 2 ms; interleaved, every part sees the same load."""
    from efficientdet.deploy import bench, timing

    clock = FakeClock()
    monkeypatch.setattr(timing, "time", clock)  # the one timing loop lives in deploy/timing.py
    calls = []

    def part(name, extra_s):
        def fn():
            load_s = max(0.0, 0.030 - 0.0003 * len(calls))
            calls.append(name)
            clock.now += load_s + extra_s

        return fn

    times = bench.time_interleaved(
        {"network": part("network", 0.0), "end_to_end": part("end_to_end", 0.002)},
        warmup=2,
        repeats=10,
        quiet=True,
    )
    assert calls[:4] == [
        "network",
        "network",
        "end_to_end",
        "end_to_end",
    ]  # every part warmed up first
    assert (
        calls[4:] == ["network", "end_to_end"] * 10
    )  # then rounds: one call of each part per round
    assert len(times["network"]) == len(times["end_to_end"]) == 10
    net, e2e = (timing.summarize(times[p])["median_ms"] for p in ("network", "end_to_end"))
    assert e2e > net and e2e - net == pytest.approx(2.0 - 0.3, abs=1e-6)


# ------------------------------------------------------------------ progress
@pytest.mark.slow
def test_models_caches_its_costs(tmp_path, monkeypatch, capsys):
    from efficientdet import model_table
    from efficientdet.nn import profile

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out = tmp_path / "models.json"
    assert main(["models", "lite0", "--json", str(out)]) == 0
    assert "computing model costs" in capsys.readouterr().err  # a progress bar while it computes
    first = json.loads(out.read_text())
    cache_file = tmp_path / "cache" / "efficientdet" / "model_costs.json"
    assert cache_file.is_file()
    # the cached numbers are the model's: parameters of the real module, multiply-adds counted afresh
    from efficientdet import create_model

    real = sum(p.numel() for p in create_model("efficientdet_lite0").parameters())
    assert first[0]["model"] == "efficientdet_lite0" and first[0]["params"] == real

    def fail(*a, **k):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(profile, "count_multiply_adds", fail)
    monkeypatch.setattr(profile, "count_parameters", fail)
    assert main(["models", "lite0", "--json", str(out)]) == 0
    assert json.loads(out.read_text()) == first and "computing" not in capsys.readouterr().err
    assert main(["models", "lite0", "--json", "-"]) == 0  # '-': stdout carries the JSON alone
    printed = capsys.readouterr()
    assert json.loads(printed.out) == first and "GFLOPs" in printed.err
    # another package version (or config) is another key, and a damaged cache is no cache:
    # both compute again (stand-in counters here) and rewrite the file
    import efficientdet

    monkeypatch.setattr(profile, "count_parameters", lambda cfg: 1234)
    monkeypatch.setattr(profile, "count_multiply_adds", lambda cfg: 5_000_000_000)
    monkeypatch.setattr(efficientdet, "__version__", "999.0")
    rows = model_table.model_rows(["efficientdet_lite0"])
    assert (rows[0]["params"], rows[0]["GFLOPs"]) == (1234, 5.0) and len(
        json.loads(cache_file.read_text())
    ) == 2
    cache_file.write_text("{not json")
    monkeypatch.setattr(profile, "count_parameters", lambda cfg: 4321)
    assert model_table.model_rows(["efficientdet_lite0"])[0]["params"] == 4321
    assert len(json.loads(cache_file.read_text())) == 1
    # an entry of the wrong type (a hand-edited or foreign file) is computed again, not printed
    cache_file.write_text(
        json.dumps(
            {
                k: {"params": "many", "multiply_adds": None}
                for k in json.loads(cache_file.read_text())
            }
        )
    )
    monkeypatch.setattr(profile, "count_parameters", lambda cfg: 777)
    assert model_table.model_rows(["efficientdet_lite0"])[0]["params"] == 777


@pytest.mark.slow
def test_export_shows_its_stages_and_quiet_hides_them(tmp_path, capsys):
    from efficientdet import create_model
    from efficientdet.factory import save_model_dict

    weights = tmp_path / "w.pt"
    torch.save(
        save_model_dict(
            create_model("efficientdet_lite0", num_classes=2, image_size=64).eval(), ["a", "b"]
        ),
        weights,
    )
    assert (
        main(
            [
                "export",
                "--weights",
                str(weights),
                "--format",
                "torchscript",
                "--out",
                str(tmp_path / "e1"),
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    for stage in (
        "loading",
        # the parity check runs on the temporary file, inside the export stage
        "exporting efficientdet_lite0 to torchscript float32 (64x64, checking against PyTorch)",
    ):
        assert f"{stage}" in err
    assert err.count(": done in ") == 2
    assert (
        main(
            [
                "export",
                "--weights",
                str(weights),
                "--format",
                "torchscript",
                "--out",
                str(tmp_path / "e2"),
                "--quiet",
                "--no-check",
            ]
        )
        == 0
    )
    assert capsys.readouterr().err == ""
    assert (tmp_path / "e2" / "w.torchscript.pt").is_file()


def test_ctrl_c_while_the_commands_import_prints_one_line(monkeypatch, capsys):
    """Ctrl+C during the first seconds (torch importing) is the commands' one line and exit 130."""

    def interrupted_import(name):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "import_module", interrupted_import)
    assert cli.main(["models"]) == 130
    captured = capsys.readouterr()
    assert captured.err == "interrupted\n"
    assert captured.out == ""
