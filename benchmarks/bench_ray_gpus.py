"""The headline search on 1, 2 and 4 GPUs of one host through the CLI: local vs Ray, scaling, an actor killed.

Every run is the command a user types (``evolkv search ... --device cuda --executor ray --workers N``), each
with its own SQLite file, the same seed and settings, so every run scores the same candidates. Per run:
launch-to-stored-winner wall time, the scoring stage (the generations after the first, where the actors have
loaded the model and prefilled their shard: only scoring is left), and every stored evaluation (stage,
generation, candidate hash, split, objective, per-task metrics). The report then checks, against the local
executor's run, that every objective and the winner are identical, and prints the speed-ups against one Ray
actor (and against the local executor).

The kill drill (``kill:N``) runs the N-actor search again and ``kill -9``s one actor's process as soon as the
run has stored its second generation: Ray restarts the actor (it loads the model and prefills its shard again)
and retries the call in flight. Nothing may be lost: the run must finish with the same evaluations, the same
objectives and the same winner as the undisturbed N-actor run, and no failed evaluation.

    python benchmarks/bench_ray_gpus.py --model /tmp/llama8b --runs local,ray:1,ray:2,ray:4,kill:4 \
        --out /tmp/raygpu [--length 8000 --population 64 --generations 6 --samples 8]
    python benchmarks/bench_ray_gpus.py --report --out /tmp/raygpu      # the tables, from the stored runs

Each run's record is written to ``OUT/NAME.json`` when it ends, so a long list can be run over several
sessions of a lent machine and reported at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path


def search_args(options: argparse.Namespace, db: Path) -> list[str]:
    return ["search", "--model", options.model, "--budget", options.budget, "--device", options.device, "--per-head",
            "--length", str(options.length), "--samples", str(options.samples), "--population",
            str(options.population), "--generations", str(options.generations), "--tasks", options.tasks,
            "--seed", "0", "--db", str(db), "--json"]


def evaluations(db: Path) -> list[dict]:
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT e.stage, e.generation, c.hash, e.split, e.label, e.objective, e.metrics, e.status "
                           "FROM evaluations e JOIN candidates c ON c.id = e.candidate_id ORDER BY e.id").fetchall()
        winner = con.execute("SELECT c.hash FROM winners w JOIN candidates c ON c.id = w.candidate_id").fetchone()
    keys = ("stage", "generation", "hash", "split", "label", "objective", "metrics", "status")
    return [dict(zip(keys, row)) for row in rows], (winner[0] if winner else None)


def generations_done(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=1) as con:
            row = con.execute("SELECT generations_done FROM runs").fetchone()
        return row[0] if row else 0
    except sqlite3.Error:
        return 0


def actor_pids() -> list[int]:
    """Processes of the search's Ray actors (Ray titles them ``ray::_Worker``, ``ray::_Worker.score``...)."""
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return sorted(int(line.split()[0]) for line in out.splitlines() if "ray::_Worker" in line)


def run_one(name: str, options: argparse.Namespace) -> dict:
    kind, _, count = name.partition(":")
    workers = int(count or 1)
    db = Path(options.out) / f"{name.replace(':', '_')}.db"
    db.unlink(missing_ok=True)
    args = search_args(options, db)
    env = dict(os.environ)
    if kind == "local":
        env["CUDA_VISIBLE_DEVICES"] = env.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
    else:
        args += ["--executor", "ray", "--workers", str(workers)]
    print(f"[{name}] $ evolkv {' '.join(args)}", flush=True)
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "evolkv", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)
    killed = None
    if kind == "kill":
        while process.poll() is None and generations_done(db) < 2:
            time.sleep(0.5)
        pids = actor_pids()
        if process.poll() is None and pids:
            victim = pids[-1]
            os.kill(victim, signal.SIGKILL)
            killed = {"pid": victim, "actors": pids, "at_s": round(time.perf_counter() - started, 1),
                      "after_generation": generations_done(db)}
            print(f"[{name}] kill -9 {victim} (actors {pids}) at {killed['at_s']} s", flush=True)
    stdout, stderr = process.communicate()
    (Path(options.out) / f"{name.replace(':', '_')}.log").write_text(stderr)
    wall = time.perf_counter() - started
    record = {"name": name, "workers": workers, "executor": "local" if kind == "local" else "ray",
              "wall_s": wall, "returncode": process.returncode, "killed": killed}
    if process.returncode != 0:
        record["error"] = stderr[-2000:]
        print(f"[{name}] exit {process.returncode}: {stderr[-800:]}", flush=True)
    else:
        detail = json.loads(stdout[stdout.index("{"):])  # Ray may print a line of its own before it
        stages = detail["timings"]["stages"]
        record.update(status=detail["status"], stages=stages, peak_gpu_gib=detail["timings"].get("peak_gpu_gib"))
        record["evaluations"], record["winner"] = evaluations(db)
        print(f"[{name}] {detail['status']} in {wall:.1f} s; scoring {scoring(record):.1f} s", flush=True)
    (Path(options.out) / f"{name.replace(':', '_')}.json").write_text(json.dumps(record))
    return record


def scoring(record: dict) -> float:
    """Seconds of the generations after the first (the first also waits for the actors' load and prefill)."""
    return sum(s["seconds"] for s in record.get("stages", [])
               if s["stage"].startswith("generation") and s["stage"] != "generation 1")


def median_generation(record: dict) -> float:
    """The median generation's seconds (after the first): the scoring time with one noisy generation out."""
    times = sorted(s["seconds"] for s in record.get("stages", [])
                   if s["stage"].startswith("generation") and s["stage"] != "generation 1")
    return times[len(times) // 2] if times else 0.0


def stage(record: dict, prefix: str) -> float:
    return sum(s["seconds"] for s in record.get("stages", []) if s["stage"].startswith(prefix))


def compare(a: dict, b: dict) -> tuple[bool, float, str]:
    """Whether ``b`` stored the same evaluations as ``a`` (same candidates, identical objectives)."""
    key = lambda e: (e["stage"], e["generation"], e["hash"], e["split"], e["label"])  # noqa: E731
    left = {key(e): e for e in a["evaluations"]}
    right = {key(e): e for e in b["evaluations"]}
    if left.keys() != right.keys():
        return False, float("nan"), f"{len(left.keys() ^ right.keys())} evaluations differ"
    diff = max(abs((left[k]["objective"] or 0) - (right[k]["objective"] or 0)) for k in left)
    same = all(left[k]["objective"] == right[k]["objective"] and left[k]["metrics"] == right[k]["metrics"]
               for k in left)
    return same and a["winner"] == b["winner"], diff, "same winner" if a["winner"] == b["winner"] else "winner differs"


def report(out: Path) -> None:
    order = {"local": 0, "ray": 1, "kill": 2}
    found = {p.stem.replace("_", ":"): json.loads(p.read_text()) for p in out.glob("*.json")}
    records = dict(sorted(found.items(), key=lambda kv: (order[kv[0].partition(":")[0]], kv[1]["workers"])))
    if not records:
        print(f"no runs stored under {out}")
        return
    ok = {n: r for n, r in records.items() if r.get("returncode") == 0}
    base = ok.get("local")
    one = ok.get("ray:1")
    print(f"{'run':>8} {'GPUs':>4} {'wall s':>8} {'scoring s':>10} {'x vs ray:1':>10} {'median gen s':>12} "
          f"{'x':>6} {'prefill+load s':>14} {'wall x':>7} {'evals':>6} {'failed':>6}  same as local")
    for name, r in records.items():
        if r.get("returncode") != 0:
            print(f"{name:>8} failed: {r.get('error', '')[-200:]!r}")
            continue
        first = stage(r, "baselines") + stage(r, "generation 1") + stage(r, "prefill")
        speed = f"{scoring(one) / scoring(r):.2f}x" if one and scoring(r) else "-"
        gen = f"{median_generation(one) / median_generation(r):.2f}x" if one and median_generation(r) else "-"
        wall = f"{one['wall_s'] / r['wall_s']:.2f}x" if one else "-"
        failed = sum(e["status"] != "ok" for e in r["evaluations"])
        same = "-"
        if base is not None and name != "local":
            equal, diff, note = compare(base, r)
            same = f"{'yes' if equal else 'NO'} (max |diff| {diff:.3g}, {note})"
        print(f"{name:>8} {r['workers']:>4} {r['wall_s']:>8.1f} {scoring(r):>10.1f} {speed:>10} "
              f"{median_generation(r):>12.2f} {gen:>6} {first:>14.1f} {wall:>7} {len(r['evaluations']):>6} "
              f"{failed:>6}  {same}")
    for name, r in ok.items():
        if r.get("killed"):
            k = r["killed"]
            twin = ok.get(name.replace("kill", "ray"))
            verdict = "no undisturbed twin run to compare"
            if twin is not None:
                equal, diff, note = compare(twin, r)
                verdict = (f"{'identical to' if equal else 'DIFFERS from'} the undisturbed {twin['name']} run "
                           f"(max |diff| {diff:.3g}, {note}); {r['wall_s'] - twin['wall_s']:+.1f} s of wall time")
            print(f"kill drill {name}: kill -9 of actor pid {k['pid']} (of {k['actors']}) at {k['at_s']} s, after "
                  f"generation {k['after_generation']}; status {r['status']}; {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="/tmp/llama8b")
    parser.add_argument("--runs", default="local,ray:1,ray:2,kill:2")
    parser.add_argument("--out", default="/tmp/raygpu")
    parser.add_argument("--budget", default="1.5%")
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of the script on a tiny model")
    parser.add_argument("--length", type=int, default=8000)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--population", type=int, default=64)
    parser.add_argument("--generations", type=int, default=6)
    parser.add_argument("--tasks", default="passkey,multikey")
    parser.add_argument("--report", action="store_true", help="only print the tables of the stored runs")
    options = parser.parse_args()
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    if not options.report:
        for name in options.runs.split(","):
            run_one(name, options)
    report(out)


if __name__ == "__main__":
    main()
