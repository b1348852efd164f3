"""benchmarks/common.py's paired timing: replies survive other output on stdout, a server that
dies says so instead of hanging the parent, and the pair statistics match a hand count."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _server_script(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "server.py"
    script.write_text(
        f"import os, sys, time\nsys.path.insert(0, {str(ROOT / 'benchmarks')!r})\n"
        "import common\n" + textwrap.dedent(body)
    )
    return script


def test_replies_survive_unterminated_output_on_stdout(bench_common, tmp_path):
    # a native library's text without a newline lands on the same line as the reply
    script = _server_script(
        tmp_path,
        """
        os.write(1, b"library chatter without a newline ")
        common.serve_timings(lambda: time.sleep(0.001), warmup=1)
        """,
    )
    with bench_common.TimingServer(script) as server:
        times = server.time(3, warmup=1)
    assert len(times) == 3 and all(t >= 1.0 for t in times)  # each call sleeps 1 ms
    assert server.proc.returncode == 0


def test_a_server_that_dies_is_an_error_with_its_stderr(bench_common, tmp_path):
    script = _server_script(tmp_path, 'sys.exit("cannot build the model")\n')
    with pytest.raises(
        bench_common.SubprocessError, match=r"(?s)ended early.*cannot build the model"
    ):
        bench_common.TimingServer(script)


def test_pair_ratios_by_hand(bench_common):
    class Fixed:  # a server whose bursts take the given medians, in turn
        def __init__(self, medians):
            self.medians = iter(medians)

        def time(self, n, warmup):
            return [next(self.medians)] * n

    # the i-th bursts of the two sides make pair i, whichever went first
    ours, peer = Fixed([10, 20, 30, 40]), Fixed([100, 100, 50, 400])
    res = bench_common.paired_ratios(ours, peer, pairs=4, burst=2, warmup=0)
    ratios = sorted([0.1, 0.2, 0.6, 0.1])
    assert res["ratio_median"] == pytest.approx((0.1 + 0.2) / 2)
    assert res["ratio_p10"] == ratios[0] and res["ratio_p90"] == ratios[-1]  # nearest rank
    assert res["ours_median_ms"] == 25 and res["peer_median_ms"] == 100
