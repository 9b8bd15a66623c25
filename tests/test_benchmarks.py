"""The benchmark scripts: gpu_check.sh's dry run writes every table, the FLOP counts of the losses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

TABLES = ("01_losses", "02_pretrain_r18", "03_pretrain_r50", "04_pipeline", "04b_device_views_run", "05_cifar_runs",
          "06_linear_probe", "07_detection", "08_eval_scale")


def _tables(text: str) -> list[list[list[str]]]:
    """The Markdown tables of ``text``: lists of rows of cells (separator rows left out)."""
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|") and line.rstrip().endswith("|"):
            cells = [c.strip() for c in line.strip()[1:-1].split("|")]
            if not all(set(c) <= {"-", ":"} and c for c in cells):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    return tables


def _env(warm_python: bool = True) -> dict:
    import warm

    # $PYTHON: a warm interpreter (tests/warm.py) for the script's ~20 short Python commands
    python = warm.client_env() if warm_python else {"PYTHON": sys.executable}
    env = dict(os.environ, TRAIN_SECONDS="5", **python)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.mark.slow
def test_gpu_check_dry_run_writes_every_table(tmp_path):
    out = tmp_path / "check"
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(out)],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=1500)
    log = (out / "gpu_check.log").read_text() if (out / "gpu_check.log").exists() else ""
    assert proc.returncode == 0, proc.stderr[-3000:] + log[-3000:]
    assert "CPU only" in (out / "00_machine.md").read_text()
    for name in TABLES:
        text = (out / f"{name}.md").read_text()
        assert "FAILED" not in text, (name, text)
        assert "DRY RUN" in text, name
        tables = _tables(text)
        assert tables, (name, text)
        header, *rows = tables[0]
        assert rows, (name, text)
        assert all(len(r) == len(header) for r in rows), (name, text)
    losses = json.loads((out / "losses.json").read_text())["rows"]
    assert {r["config"] for r in losses} == {
        "W-MSE CIFAR", "CW-RGP CIFAR", "CW-RGP ImageNet", "INTL CIFAR V2", "INTL ImageNet V2", "INTL ImageNet V6"}
    for recipe in ("wmse_cifar10_2views", "intl_cifar10"):
        knn = sorted((out / "records" / f"knn_{recipe}").glob("*.json"))
        assert len(knn) == 2, knn  # eval.knn's two default protocols
        for record in [*knn, out / "records" / f"linear_fast_{recipe}.json"]:
            assert "top1" in json.loads(record.read_text())["metrics"], record
    steps = json.loads((out / "pretrain_r18.json").read_text())["rows"]
    assert {r["compile"] for r in steps} == {"no", "eager"}


def test_gpu_check_refuses_an_unknown_argument():
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--fast"], cwd=REPO,
                          env=_env(warm_python=False), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "gpu_check.sh: unknown argument --fast; usage: bash benchmarks/gpu_check.sh [--dry-run] [--out DIR]"]


@pytest.mark.parametrize("name", ["INTL CIFAR V2", "CW-RGP ImageNet"])
def test_loss_flops_bound_the_matmul_flops_torch_counts(name):
    """torch's FLOP counter sees every matmul the implementation runs (forward + autograd backward;
    eigh / Cholesky are not counted): the count from the math holds the same products plus the
    factorisations, so it lies between the counted FLOPs and those plus the factorisations."""
    import losses as bench
    from torch.utils.flop_counter import FlopCounterMode

    from wssl_zoo.losses import build_loss

    cfg = next(c for c in bench.CONFIGS if c.name == name)
    small = bench.Config(cfg.name, cfg.method, cfg.views, cfg.batch // 4, cfg.dim // 4,
                         {k: (v // 4 if k == "w_size" else v) for k, v in cfg.params.items()})
    x = torch.randn(small.views, small.batch, small.dim, requires_grad=True)
    loss = build_loss(small.method, **small.params)
    with FlopCounterMode(display=False) as counter:
        loss(x).backward()
    counted = counter.get_total_flops()
    ours = bench.loss_flops(small)
    if small.method == "intl":
        # No factorisation: every FLOP of the formula is a product torch counts, and no other.
        assert ours == pytest.approx(counted, rel=0.01)
    else:
        w = small.params["w_size"]
        factorisations = small.views * (small.batch // w) * small.params["groups"] * 15 * w ** 3
        assert counted <= ours <= counted + factorisations * 1.01


def test_every_cwrgp_step_row_of_the_cpu_and_tiny_tables_has_a_loss_that_runs_on_its_batch():
    """The CPU (batch 32) and --tiny (batch 8) rows shrink the recipes' batches; CW-RGP's
    covariance blocks (128 samples in the ImageNet recipe) must shrink with them (the rows raised
    "cov_block=128 does not divide the per-process batch" before)."""
    import pretrain as bench

    from wssl_zoo.losses import build_loss

    rows = [row for tiny in (False, True) for row in bench.configs("cpu", tiny) if row["name"].startswith("cwrgp")]
    assert len(rows) == 4
    for row in rows:
        loss = build_loss("cwrgp", **row["loss"])
        views = [torch.randn(row["batch"], row["proj"]["out_dim"], generator=torch.Generator().manual_seed(i))
                 for i in range(row["views"])]
        assert torch.isfinite(loss(views)), row["name"]
