"""Mutation check of the test suite itself (not collected by pytest: the name does not start with
``test_``).

Each fault below is a deliberate bug planted in a scratch copy of the repository (the tracked and
untracked, not ignored, files); the tests that guard against it are run on that copy and must turn
red. The same tests are first run on the unmodified copy and must be green, so a red run is the
fault's doing::

    python tests/mutation_check.py                 # every fault
    python tests/mutation_check.py --only cache    # faults whose name contains "cache"
    python tests/mutation_check.py --no-baseline   # skip the green runs

Prints one line per run and exits 1 if a fault left its tests green (or a baseline was red).
All six faults with their baselines: about 2 minutes (105 s on 2026-12-02) on the project's 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Fault:
    name: str
    file: str  # relative to the repository root
    old: str  # must occur exactly once in the file
    new: str
    tests: tuple[str, ...]  # pytest arguments (files, -k expressions)


FAULTS = (
    Fault("the W-MSE loss ignores whitening", "wssl_zoo/losses/wmse.py",
          "z = cholesky_whiten(sub, self.eps).reshape(num_views, n, dim)", "z = sub.reshape(num_views, n, dim)",
          ("tests/test_losses.py", "tests/test_learning.py", "-k", "parity or wmse")),
    Fault("resume ignores the checkpoint", "wssl_zoo/pretrain/loop.py",
          "    if resume_from is not None:\n        _resume(run, resume_from)",
          "    if False:\n        _resume(run, resume_from)",
          ("tests/test_resume.py", "-k", "cwrgp_adam or refuses")),
    Fault("the feature cache key ignores the weights", "eval/features.py",
          "key_src = json.dumps(dict(weights=weights.weights_sha256,", "key_src = json.dumps(dict(weights=None,",
          ("tests/test_features.py", "-k", "hit or miss or damaged_entry")),
    Fault("the download hash check is skipped", "wssl_zoo/hub.py",
          "    if actual != expected:\n        _discard(local)", "    if False:\n        _discard(local)",
          ("tests/test_hub.py", "-k", "tampered or hash_mismatch or failed_publish")),
    Fault("--amp is parsed but the loop runs without autocast", "wssl_zoo/evaluation.py",
          '    if amp == "none":\n        return contextlib.nullcontext()',
          '    if True:\n        return contextlib.nullcontext()',
          ("tests/test_pretrain_options.py", "-k", "amp")),
    Fault("the linear probe reports its best epoch", "eval/linear.py",
          "    metrics = history[-1][\"metrics\"]\n",
          "    metrics = max(history, key=lambda h: h[\"metrics\"][\"top1\"])[\"metrics\"]\n",
          ("tests/test_linear_probe.py", "-k", "final_epoch and fast")),
)


def scratch_copy(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def run_tests(root: Path, args: tuple[str, ...]) -> tuple[int, str, float]:
    env = dict(os.environ, PYTHONPATH=str(root), WSSL_SHARED_DIR=str(REPO.parent / "shared"))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-n", "0", "-p", "no:cacheprovider", *args], cwd=root,
                          env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return proc.returncode, (lines[-1] if lines else proc.stderr.strip()[-200:]), time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="", help="run the faults whose name contains this text")
    p.add_argument("--no-baseline", action="store_true", help="do not run the tests on the unmodified copy first")
    args = p.parse_args(argv)
    ok = True
    for fault in (f for f in FAULTS if args.only in f.name):
        with tempfile.TemporaryDirectory(prefix="wssl-mutation-") as tmp:
            root = Path(tmp)
            scratch_copy(root)
            target = root / fault.file
            text = target.read_text()
            if text.count(fault.old) != 1:
                print(f"{fault.name}: {fault.file}: the text to change occurs {text.count(fault.old)} times; "
                      "update FAULTS", flush=True)
                ok = False
                continue
            if not args.no_baseline:
                rc, last, secs = run_tests(root, fault.tests)
                print(f"baseline   {'GREEN' if rc == 0 else 'RED  '} {fault.name} ({secs:.0f} s): {last}", flush=True)
                ok &= rc == 0
            target.write_text(text.replace(fault.old, fault.new))
            rc, last, secs = run_tests(root, fault.tests)
            print(f"mutated    {'RED  ' if rc != 0 else 'GREEN'} {fault.name} ({secs:.0f} s): {last}", flush=True)
            ok &= rc != 0
    print("every fault turned its tests red" if ok else "SOME FAULT WENT UNDETECTED (or a baseline failed)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
