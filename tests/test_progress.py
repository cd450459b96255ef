"""Progress where no terminal is: plain timestamped lines on stderr at a steady pace; none with --quiet."""

import io
import subprocess
import sys

from evolkv.progress import LogReporter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_log_lines_come_at_a_steady_pace_with_the_stage_the_best_and_an_eta():
    clock, out = Clock(), io.StringIO()
    log = LogReporter("KL", interval=10.0, stream=out, clock=clock)
    log.stage("prefill search samples", total=4)
    for _ in range(3):
        clock.now += 1.0
        log.advance()  # within the interval: no line
    clock.now += 1.0
    log.advance()  # the last one: always a line
    for gen in range(1, 7):
        clock.now += 4.0
        log.generation(gen, 6, 1.0 / gen, 2.0)
    clock.now += 30.0
    log.heartbeat()
    lines = out.getvalue().splitlines()
    assert lines[0] == "[  0:00] prefill search samples (0/4)"
    assert lines[1] == "[  0:04] prefill search samples 4/4"
    assert lines[2].endswith("generation 1/6  best KL 1.0000  2.00 evals/s")  # the first, at once
    assert "generation 4/6" in lines[3] and "ETA 0m08s" in lines[3]  # 10 s after the first: 4 s a generation
    assert "generation 6/6" in lines[4] and "ETA 0m00s" in lines[4]  # the last, always
    assert lines[5].endswith("search, still running")
    assert len(lines) == 6


def test_a_search_into_a_pipe_logs_its_stages_and_generations_and_quiet_silences_them(model_dirs, tmp_path):
    args = [sys.executable, "-m", "evolkv", "search", "--model", model_dirs["llama"], "--budget", "20%",
            "--generations", "2", "--population", "2", "--samples", "1", "--length", "120", "--tasks", "passkey",
            "--baselines", "full,uniform", "--db", str(tmp_path / "x.db"), "--json"]
    logged = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert logged.returncode == 0, logged.stderr[-2000:]
    assert "prefill search samples" in logged.stderr and "generation 2/2  best KL" in logged.stderr
    assert all(line.startswith("[") for line in logged.stderr.splitlines() if line.strip())
    quiet = subprocess.run([*args, "--quiet"], capture_output=True, text=True, timeout=600)
    assert quiet.returncode == 0 and quiet.stderr.strip() == ""
