"""The linear probe (eval.linear): every protocol runs and writes its record (final epoch, best epoch,
world size, per-process batch), seeds, subsets, the random-init baseline, the global-batch data
order, features streamed from disk, and 2 gloo processes = 1 process; real CIFAR-10 where present."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from eval import knn, linear
from eval.protocols import get_protocol, with_overrides
from eval.records import validate_record
from eval.training import Checkpoint, GlobalBatchSampler, best_epoch
from wssl_zoo.fileio import sha256_file
from wssl_zoo.weights import resolve

from builders import EVAL_MAIN_SCRIPT, feature_shards, final_checkpoint
from conftest import REPO_ROOT, cifar10_subset, eval_args

pytestmark = pytest.mark.usefixtures("cache")  # a feature cache of its own for every test


@pytest.fixture(scope="module")
def cifar_small(tmp_path_factory, shared_data_dir) -> Path:
    """20 training and 10 test JPEGs of every CIFAR-10 class, streamed out of the shared tarball."""
    return cifar10_subset(shared_data_dir, tmp_path_factory.mktemp("cifar"), 20, 10)


def test_fast_protocol_writes_a_valid_record_and_the_second_run_hits_the_cache(resnet18_dir, colour_data, tmp_path, cache):
    out = tmp_path / "r.json"
    assert linear.main([*eval_args(resnet18_dir, colour_data, out), "--epochs", "30"]) == 0
    first = json.loads(out.read_text())
    validate_record(first)
    assert first["cache_hit"] is False and first["protocol"]["name"] == "fast+epochs=30"
    assert first["weights_sha256"] == sha256_file(resnet18_dir / "model.safetensors")
    assert first["train_samples"] == 24 and first["test_samples"] == 12 and "python -m eval.linear" in first["command"]
    assert len(list(cache.glob("*/index.json"))) == 2  # train and test features (a folder of shards each)
    assert linear.main([*eval_args(resnet18_dir, colour_data, out), "--epochs", "30"]) == 0
    second = json.loads(out.read_text())
    assert second["cache_hit"] is True and second["metrics"] == first["metrics"]
    assert second["dataset"]["fingerprint"] == first["dataset"]["fingerprint"]
    assert first["metrics"]["top1"] > 80  # colour-coded classes are linearly separable even at random init


@pytest.mark.parametrize("protocol", ["fast", "intl"])  # cached features; augmented images every epoch
def test_the_record_holds_the_final_epoch_never_the_best(resnet18_dir, colour_data, tmp_path, monkeypatch, protocol):
    """The README's "final-epoch metrics": a schedule whose 4th epoch is gradient ascent (lr -100)
    ruins a classifier that was good after 3 epochs; the 4-epoch record must hold the ruined
    final accuracy, not the better one of epoch 3 (the 3-epoch run's record: the same trajectory)."""
    monkeypatch.setattr(linear, "lr_at", lambda p, epoch: -100.0 if epoch == 3 else 0.1)
    tops = {}
    for epochs in (3, 4):
        out = tmp_path / f"{epochs}.json"
        assert linear.main([*eval_args(resnet18_dir, colour_data, out), "--protocol", protocol, "--epochs", str(epochs),
                            "--batch-size", "8"]) == 0
        tops[epochs] = json.loads(out.read_text())["metrics"]["top1"]
    assert tops[3] >= 75 and tops[4] <= tops[3] - 30, tops


def test_every_linear_protocol_runs(resnet18_dir, colour_data, tmp_path):
    for name in ("small", "intl", "cwrgp"):
        out = tmp_path / f"{name}.json"
        assert linear.main([*eval_args(resnet18_dir, colour_data, out), "--protocol", name, "--epochs", "1",
                            "--batch-size", "8"]) == 0
        record = json.loads(out.read_text())
        validate_record(record)
        assert record["protocol"]["name"].startswith(f"{name}+") and 0 <= record["metrics"]["top1"] <= 100


def test_several_seeds_write_one_record_each(resnet18_dir, colour_data, tmp_path, capsys):
    out = tmp_path / "seeds"
    assert linear.main([*eval_args(resnet18_dir, colour_data, out), "--epochs", "3", "--seeds", "2"]) == 0
    assert sorted(json.loads(p.read_text())["seed"] for p in out.glob("*.json")) == [0, 1]
    assert "over 2 seeds" in capsys.readouterr().out
    # --out FILE.json means that one file: a run that writes two records is refused before any work
    before = sorted(tmp_path.rglob("*"))
    assert linear.main([*eval_args(resnet18_dir, colour_data, tmp_path / "s.json"), "--epochs", "3", "--seeds", "2"]) == 2
    assert "--out" in capsys.readouterr().err and sorted(tmp_path.rglob("*")) == before


def test_random_init_baseline_is_reproducible_and_distinct():

    a, b, c = resolve("random:resnet18", 0), resolve("random:resnet18", 0), resolve("random:resnet18", 1)
    assert a.weights_sha256 == b.weights_sha256 != c.weights_sha256 and a.label == "random-resnet18-imagenet-224px"


def test_errors_are_one_line(resnet18_dir, tmp_path, capsys):
    assert linear.main(["--model", str(resnet18_dir), "--data", str(tmp_path / "none"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("eval.linear: error:") and "none" in err and "Traceback" not in err
    assert linear.main(["--model", "not_a_model", "--data", str(tmp_path)]) == 2
    assert "unknown model 'not_a_model'" in capsys.readouterr().err


def test_cached_protocol_with_a_train_subset_is_recorded(resnet18_dir, colour_data, tmp_path):
    out = tmp_path / "sub.json"
    assert linear.main([*eval_args(resnet18_dir, colour_data, out), "--epochs", "2", "--train-subset", "6"]) == 0
    rec = json.loads(out.read_text())
    assert rec["protocol"]["name"] == "fast+epochs=2+train_subset=6" and rec["train_samples"] == 6
    assert rec["protocol"]["overrides"] == {"epochs": 2} and rec["protocol"]["train_subset"] == 6


def test_two_ranks_take_the_global_batches_of_one_process():
    one = GlobalBatchSampler(23, 8, seed=3, rank=0, world=1)
    ranks = [GlobalBatchSampler(23, 8, seed=3, rank=r, world=2) for r in range(2)]
    for epoch in (0, 1):
        for s in (one, *ranks):
            s.set_epoch(epoch)
        merged = [a + b for a, b in zip(*ranks)]
        assert merged == list(one) and [len(b) for b in one] == [8, 8, 7]
        assert ranks[0].per_process_batch == 4 and sorted(i for b in one for i in b) == list(range(23))
    assert list(one) != (one.set_epoch(0) or list(one))  # another order every epoch
    one.set_epoch(1, start_step=2)
    assert len(one) == 1 and len(list(one)[0]) == 7  # a resumed epoch starts mid-way
    # train-mode BN: a last global batch that would give a rank one image is dropped
    assert GlobalBatchSampler(17, 8, 0, 0, 2, min_per_rank=2).steps == 2
    assert GlobalBatchSampler(21, 8, 0, 0, 2, min_per_rank=2).steps == 3
    empty = GlobalBatchSampler(9, 8, 0, 1, 2)  # rank 1's part of the last batch (1 sample) is empty
    assert [len(b) for b in empty] == [4, 0]


def test_the_cached_probe_streams_rows_from_disk_as_it_trains_on_the_device(tmp_path):
    """The cached probe with its training rows on the device (resident) or taken from the memory-mapped
    shards at every step: the same classifier, bit for bit."""

    gen = torch.Generator().manual_seed(4)
    x, y = torch.randn(90, 16, generator=gen) + torch.arange(3).repeat(30)[:, None], torch.arange(3).repeat(30)
    train, test = feature_shards(tmp_path / "tr", x, y, world=2), feature_shards(tmp_path / "te", x[:30], y[:30], world=1)
    protocol = with_overrides(get_protocol("fast"), epochs=3, batch_size=16)[0]
    results = []
    for resident in (True, False):
        job = Checkpoint(tmp_path / f"{resident}.ckpt", {"x": 1}, resume=False, resume_with="-", keep=True)
        (history, _), _ = linear.train_on_features(protocol, train, torch.arange(90), test, 0, torch.device("cpu"),
                                                   job, progress=False, resident=resident)
        job.finish()
        results.append((history, torch.load(job.final_path, weights_only=True)["state"]["classifier"]))
    assert results[0][0] == results[1][0]
    for key in results[0][1]:
        assert torch.equal(results[0][1][key], results[1][1][key]), key


def test_best_epoch_is_the_first_best_as_the_authors_keep_it():
    history = [dict(epoch=1, metrics={"top1": 50.0}), dict(epoch=2, metrics={"top1": 60.0}),
               dict(epoch=3, metrics={"top1": 60.0}), dict(epoch=4, metrics={"top1": 55.0})]
    assert best_epoch(history) == (2, {"top1": 60.0})


def test_a_linear_record_says_final_and_best_world_and_per_process_batch(test_resnet_dir, colour_data, tmp_path, monkeypatch):
    """Epochs 1-3 learn, epoch 4 ruins the classifier (lr -100): metrics are the final epoch's, best_* an earlier one's."""
    monkeypatch.setattr(linear, "lr_at", lambda p, epoch: -100.0 if epoch == 3 else 0.1)
    out = tmp_path / "r.json"
    assert linear.main([*eval_args(test_resnet_dir, colour_data, out, "--device", "cpu"), "--protocol", "fast", "--epochs", "4", "--batch-size", "8"]) == 0
    rec = json.loads(out.read_text())
    validate_record(rec)
    assert rec["best_epoch"] <= 3 and rec["best_metrics"]["top1"] > rec["metrics"]["top1"] + 20
    assert (rec["world_size"], rec["per_process_batch"], rec["epochs_run"]) == (1, 8, 4)
    assert not out.with_name("r.ckpt").exists()  # the checkpoint has served
    with pytest.raises(ValueError, match="'best_metrics' must be finite numbers, given with 'best_epoch'"):
        validate_record({k: v for k, v in rec.items() if k != "best_epoch"})


@pytest.mark.slow
@pytest.mark.gloo
@pytest.mark.parametrize("protocol", ["cwrgp", "small"])
def test_two_gloo_processes_train_the_classifier_of_one_process(test_resnet_dir, colour_data, tmp_path, protocol):
    """The authors' lincls under torchrun: 2 processes with 4 images each of every global batch of 8 give
    the classifier and metrics of 1 process with batches of 8. Tolerance: 1e-6 on the weights, and the
    metrics equal: the features of 4 and 8 images per forward, and the gradient summed by one matmul
    or by two and an all-reduce, differ in the last bits of float32 (summation order), nothing more."""
    import warm

    script = tmp_path / "run.py"
    script.write_text(EVAL_MAIN_SCRIPT)
    outs = {}
    for world in (1, 2):
        out = tmp_path / f"w{world}" / "r.json"
        out.parent.mkdir()
        extra = {"cwrgp": ["--epochs", "3"], "small": ["--epochs", "5"]}[protocol]
        args = [str(script), "linear", *eval_args(test_resnet_dir, colour_data, out, "--device", "cpu"), "--protocol", protocol, "--batch-size", "8",
                *extra, "--keep-checkpoint"]
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "WSSL_ZOO_CACHE": str(tmp_path / f"c{world}")}
        run = warm.torchrun(world, args, cwd=REPO_ROOT, timeout=300, env=env) if world == 2 else \
            warm.run([sys.executable, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        outs[world] = out
    one, two = (json.loads(outs[w].read_text()) for w in (1, 2))
    assert (one["world_size"], one["per_process_batch"], two["world_size"], two["per_process_batch"]) == (1, 8, 2, 4)
    assert one["metrics"] == two["metrics"] and one["best_metrics"] == two["best_metrics"]
    a, b = (final_checkpoint(outs[w])["state"]["classifier"] for w in (1, 2))
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=0, atol=1e-6), (key, float((a[key] - b[key]).abs().max()))
    # the features the 2 processes extracted: one shard per rank (the test split; the training split too for small)
    shards = [len(json.loads(p.read_text())["shards"]) for p in (tmp_path / "c2").glob("*/index.json")]
    assert shards == [2] * (2 if protocol == "small" else 1)


@pytest.mark.slow
def test_real_cifar10_fast_linear_and_knn(cifar_small, tmp_path):
    """The fast protocol and both k-NN rules on 200 real CIFAR-10 training JPEGs (random init, and
    the pretrained INTL ResNet-18 of benchmarks/cifar10_pretrain.sh when runs/ has it)."""
    models = ["random:resnet18:imagenet:32"]
    pretrained = REPO_ROOT / "runs" / "cifar10_intl_cifar10_imagenet_e2"
    if (pretrained / "model.safetensors").is_file():
        models.append(str(pretrained))
    for i, model in enumerate(models):
        common = ["--model", model, "--data", str(cifar_small), "--no-progress", "--workers", "0"]
        assert linear.main([*common, "--epochs", "20", "--out", str(tmp_path / f"l{i}.json")]) == 0
        assert knn.main([*common, "--out", str(tmp_path / f"k{i}")]) == 0
        lin = json.loads((tmp_path / f"l{i}.json").read_text())
        assert lin["train_samples"] == 200 and lin["test_samples"] == 100
        assert lin["metrics"]["top1"] > 10  # better than chance on 10 classes, even at random init
        rules = [json.loads(p.read_text()) for p in (tmp_path / f"k{i}").glob("*.json")]
        assert sorted(r["protocol"]["name"] for r in rules) == ["knn200", "knn5"]
        for record in rules:
            validate_record(record)
