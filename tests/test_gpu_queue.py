"""benchmarks/gpu_queue.py's side-by-side rows, budget and archive, with a stand-in for the trainer
(the real rows ran at smoke budget on a CPU: RESULTS.md, the evidence queue)."""
import json
import os
import tarfile

from benchmarks import gpu_queue

# The child's argv: method, imbalance, seed, budget, workdir, overrides. `slow` waits for SIGTERM,
# leaves a checkpoint and exits 3 as the trainer does; any other method finishes at once.
STAND_IN = """
import json, os, signal, sys, time
method, workdir = sys.argv[1], sys.argv[5]
os.makedirs(workdir, exist_ok=True)
json.dump({"argv": sys.argv[1:]}, open(os.path.join(workdir, "config.json"), "w"))
if method == "slow":
    def stop(*_):
        os.makedirs(os.path.join(workdir, "checkpoints", "phase1", "3"))
        sys.exit(3)
    signal.signal(signal.SIGTERM, stop)
    print("started", flush=True)
    time.sleep(60)
    sys.exit(0)
json.dump({"overall": 40.0, "many": 60.0, "medium": 40.0, "few": 10.0, "wall_time_s": {"joint": 1.5}},
          open(os.path.join(workdir, "results.json"), "w"))
"""


def test_rows_side_by_side_stop_at_the_budget_and_come_back_in_one_archive(tmp_path):
    codes = gpu_queue.run_rows([("plain", 1), ("slow", 2)], 100, "smoke", ["--config.x=1"], budget_seconds=4,
                               root=str(tmp_path / "root"), out=str(tmp_path / "out"), child=STAND_IN)
    assert codes == [0, 3]
    summary = (tmp_path / "out" / "gpu_queue.txt").read_text()
    assert "plain_if100_seed1: exit 0, overall 40.00 many 60.00 medium 40.00 few 10.00, wall 2 s" in summary
    assert "slow_if100_seed2: exit 3, not finished (checkpoints in the archive)" in summary
    with tarfile.open(tmp_path / "out" / "gpu_queue.tar.gz") as tar:
        names = set(tar.getnames())
        config = json.load(tar.extractfile("plain_if100_seed1/config.json"))
    assert {"plain_if100_seed1/results.json", "plain_if100_seed1/process.out", "slow_if100_seed2/config.json",
            "slow_if100_seed2/checkpoints/phase1/3"} <= names
    assert not any(n.startswith("plain_if100_seed1/checkpoints") for n in names)  # A finished row: results only.
    # Each row got the queue's arguments: method, imbalance, seed, budget, its workdir, the overrides.
    assert config["argv"] == ["plain", "100", "1", "smoke", os.path.join(str(tmp_path / "root"), "plain_if100_seed1"),
                              "--config.x=1"]
