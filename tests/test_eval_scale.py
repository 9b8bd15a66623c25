"""The shared benchmark at its real size (issue 22), proven at CIFAR size on the CPU: device k-NN = the CPU
rules, per-rank feature shards, the global-batch data order, 2 processes = 1 process, SIGKILL / SIGTERM +
--resume = an uninterrupted run, the refusals of a wrong resume, the paper protocol by default, float32 by
default, and records that say final and best."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import wssl_zoo
from eval import knn, linear, semi
from eval.protocols import paper_linear_protocol
from eval.records import is_full_evaluation, validate_record
from eval.training import Checkpoint, GlobalBatchSampler, best_epoch
from wssl_zoo.evaluation import (FeatureShards, k_smallest, knn_predict, write_feature_shard,
                                 write_feature_shards, write_shard_index)
from wssl_zoo.modelio import save_model_dir
from wssl_zoo.weights import ResolvedWeights, resolve

REPO = Path(__file__).resolve().parent.parent
COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]


def colour_folder(root: Path, train: int = 8, test: int = 4, held: str = "val", seed: int = 0) -> Path:
    """ROOT/train/<class>/ and ROOT/<held>/<class>/, 32 px PNGs, one colour per class plus noise."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", train), (held, test)):
        for c, color in enumerate(COLORS):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                noise = rng.integers(0, 60, (32, 32, 3))
                Image.fromarray(np.clip(np.array(color) + noise, 0, 255).astype(np.uint8)).save(d / f"im{i}.png")
    return root


def tiny_model(out: Path, **meta) -> Path:
    """timm's test_resnet (370k parameters) saved as a model directory, 32 px."""
    torch.manual_seed(0)
    save_model_dir(out, wssl_zoo.create("test_resnet"), arch="test_resnet", stem="imagenet", mean=(0.5,) * 3,
                   std=(0.25,) * 3, img_size=32, extra_meta={"method": "intl", **meta})
    return out


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return colour_folder(tmp_path_factory.mktemp("data") / "tiny")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("model") / "m")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WSSL_ZOO_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def common(model_dir, folder, out) -> list[str]:
    return ["--model", str(model_dir), "--data", str(folder), "--out", str(out), "--no-progress", "--workers", "0",
            "--device", "cpu"]


# ---------------------------------------------------------------------------- k-NN on the device


def reference_knn(xtr, ytr, xq, k, rule, temperature=0.07, chunk=1024):
    """The k-NN rules as wssl_zoo.evaluation ran them on the CPU before issue 22 (kept here as the
    reference): the whole bank at once per query chunk, torch.topk, scatter_add / one-hot votes."""
    classes = int(ytr.max()) + 1
    k = min(k, len(xtr))
    if rule != "majority-euclidean":
        xtr, xq = F.normalize(xtr, dim=1), F.normalize(xq, dim=1)
    preds = []
    for start in range(0, len(xq), chunk):
        q = xq[start:start + chunk]
        if rule == "majority-euclidean":
            idx = torch.cdist(q, xtr).topk(k, dim=1, largest=False).indices
        else:
            top, idx = (q @ xtr.T).topk(k, dim=1)
        if rule == "weighted-cosine":
            scores = torch.zeros(len(idx), classes).scatter_add_(1, ytr[idx], (top / temperature).exp())
        else:
            scores = F.one_hot(ytr[idx], classes).sum(1)
        preds.append(scores.argmax(1))
    return torch.cat(preds)


@pytest.mark.parametrize("rule", ["majority-euclidean", "majority-cosine", "weighted-cosine"])
def test_chunked_device_knn_gives_the_cpu_rules_predictions(rule):
    """Random features, bank and queries cut into uneven chunks (1500 = 3 x 400 + 300 bank rows, 300 = 3 x
    96 + 12 queries): the same predictions as the whole-bank CPU rule for every k, including vote ties
    (k=2, k=4 between 10 classes: many ties, which go to the smallest class in both)."""
    gen = torch.Generator().manual_seed(0)
    xtr, ytr = torch.randn(1500, 24, generator=gen), torch.randint(0, 10, (1500,), generator=gen)
    xq = torch.randn(300, 24, generator=gen)
    for k in (1, 2, 4, 5, 20, 200):
        want = reference_knn(xtr, ytr, xq, k, rule)
        got = knn_predict(xtr, ytr, xq, k, rule, chunk=96, bank_chunk=400, device="cpu")
        assert torch.equal(got, want), (rule, k, int((got != want).sum()))
    votes = F.one_hot(ytr[torch.cdist(xq, xtr).topk(2, largest=False).indices], 10).sum(1)
    assert int((votes.max(1).values == 1).sum()) > 200  # the k=2 case above is mostly vote ties


def test_exact_distance_ties_are_broken_towards_the_smaller_bank_index_in_every_chunking():
    """Duplicated bank rows (exact distance ties at the k-th neighbour, where torch.topk keeps an
    arbitrary one): the k nearest are the smaller bank indices, whatever the chunk sizes; where the
    tie does not cross the k-th place the predictions are the CPU rule's."""
    base = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [3.0, 3.0]])
    xtr = base.repeat(6, 1)  # rows i, i+4, i+8, ... coincide
    ytr = torch.arange(24) % 5  # duplicates carry different labels
    xq = torch.tensor([[0.1, 0.0], [2.9, 3.0], [0.0, 0.9]])
    keys = torch.cdist(xq, xtr)
    for bank_chunk in (1, 3, 5, 24):
        for chunk in (1, 2, 3):
            got = knn_predict(xtr, ytr, xq, 3, "majority-euclidean", chunk=chunk, bank_chunk=bank_chunk)
            # the 3 nearest of query 0 are the copies of row 0 with the smallest indices: 0, 4, 8
            assert got.tolist() == F.one_hot(ytr[k_smallest(keys, 3)[1]], 5).sum(1).argmax(1).tolist()
    values, columns = k_smallest(keys, 3)
    assert columns[0].tolist() == [0, 4, 8] and columns[1].tolist() == [3, 7, 11]
    # the whole tie group in (k = 6 copies): the CPU rule's own answer
    assert torch.equal(knn_predict(xtr, ytr, xq, 6, "majority-euclidean", bank_chunk=5),
                       reference_knn(xtr, ytr, xq, 6, "majority-euclidean"))


def test_k_smallest_keeps_the_smallest_columns_of_a_tie():
    keys = torch.tensor([[3.0, 1, 1, 1, 2, 0], [5.0, 5, 5, 5, 5, 5]])
    values, columns = k_smallest(keys, 3)
    assert values.tolist() == [[0, 1, 1], [5, 5, 5]] and columns.tolist() == [[5, 1, 2], [0, 1, 2]]


def test_knn_reads_a_bank_of_feature_shards_chunk_by_chunk(tmp_path):
    gen = torch.Generator().manual_seed(1)
    xtr, ytr = torch.randn(300, 8, generator=gen), torch.randint(0, 4, (300,), generator=gen)
    xq = torch.randn(40, 8, generator=gen)
    store = _shards(tmp_path / "bank", xtr, ytr, world=3)
    assert len(store.index["shards"]) == 3
    for rule in ("majority-euclidean", "weighted-cosine"):
        assert torch.equal(knn_predict(store, store.labels, xq, 5, rule, bank_chunk=64), reference_knn(xtr, ytr, xq, 5, rule))


# ---------------------------------------------------------------------------- feature shards


class _Rows(torch.utils.data.Dataset):
    """(row i of x, y[i]) pairs: a dataset whose 'images' are already features (the model is nn.Identity)."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def _shards(folder: Path, x, y, world: int) -> FeatureShards:
    """What ``world`` ranks write (each its block, then rank 0 the index), written here one after the other."""
    folder.mkdir(parents=True)
    for rank in range(world):
        write_feature_shard(folder, torch.nn.Identity(), _Rows(x, y), rank, world, batch_size=7, workers=0)
    write_shard_index(folder, len(x), world)
    return FeatureShards(folder)


def test_feature_shards_hold_each_ranks_block_and_read_back_rows_chunks_and_the_whole(tmp_path):
    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(53, 6, generator=gen), torch.randint(0, 3, (53,), generator=gen)
    one = _shards(tmp_path / "one", x, y, world=1)
    two = _shards(tmp_path / "two", x, y, world=2)
    assert [(s["start"], s["stop"]) for s in two.index["shards"]] == [(0, 27), (27, 53)]
    for store in (one, two):
        assert torch.equal(store.tensor(), x) and torch.equal(store.labels, y) and store.shape == (53, 6)
        idx = torch.tensor([52, 0, 27, 26, 26, 3])
        assert torch.equal(store.take(idx), x[idx]) and torch.equal(store.range(20, 40), x[20:40])
        chunks = list(store.chunks(10))
        assert torch.equal(torch.cat([c for _, c in chunks]), x) and max(len(c) for _, c in chunks) <= 10
        assert torch.equal(store.to("cpu", rows=8), x)
    first = next(two.chunks(100))[1]  # a chunk is a view of the shard's memory map, not a copy
    assert first.untyped_storage().data_ptr() == next(two.chunks(5))[1].untyped_storage().data_ptr()


def test_a_damaged_shard_is_refused_naming_it(tmp_path):
    x, y = torch.randn(20, 4), torch.arange(20) % 2
    store = _shards(tmp_path / "s", x, y, world=2)
    victim = store.folder / store.index["shards"][1]["features"]["file"]
    raw = bytearray(victim.read_bytes())
    raw[-3] ^= 0x10
    victim.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=f"{victim.name}: its sha256 does not match"):
        FeatureShards(store.folder)
    victim.write_bytes(bytes(raw[:-8]))
    with pytest.raises(ValueError, match="missing or not"):
        FeatureShards(store.folder)


def test_extraction_keeps_the_shards_a_killed_run_finished(tmp_path):
    """A rerun after a crash skips the shard a rank had finished (its model is not even called)."""
    x, y = torch.randn(10, 3), torch.arange(10) % 2
    write_feature_shards(tmp_path / "f", torch.nn.Identity(), _Rows(x, y), batch_size=4, workers=0)
    (tmp_path / "f" / "index.json").unlink()  # killed after the shard, before the index

    class Boom(torch.nn.Module):
        def forward(self, x):
            raise AssertionError("the finished shard was extracted again")

    write_feature_shards(tmp_path / "f", Boom(), _Rows(x, y), batch_size=4, workers=0)
    assert torch.equal(FeatureShards(tmp_path / "f").tensor(), x)


def test_no_feature_is_pickled_to_every_rank():
    for path in ("wssl_zoo/evaluation.py", "eval/features.py", "eval/knn.py", "eval/linear.py"):
        assert "all_gather_object" not in (REPO / path).read_text(), path


# ---------------------------------------------------------------------------- data order, probes


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
    from eval.protocols import get_protocol, with_overrides

    gen = torch.Generator().manual_seed(4)
    x, y = torch.randn(90, 16, generator=gen) + torch.arange(3).repeat(30)[:, None], torch.arange(3).repeat(30)
    train, test = _shards(tmp_path / "tr", x, y, world=2), _shards(tmp_path / "te", x[:30], y[:30], world=1)
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


def test_a_linear_record_says_final_and_best_world_and_per_process_batch(model_dir, folder, tmp_path, monkeypatch):
    """Epochs 1-3 learn, epoch 4 ruins the classifier (lr -100): metrics are the final epoch's, best_* an earlier one's."""
    monkeypatch.setattr(linear, "lr_at", lambda p, epoch: -100.0 if epoch == 3 else 0.1)
    out = tmp_path / "r.json"
    assert linear.main([*common(model_dir, folder, out), "--protocol", "fast", "--epochs", "4", "--batch-size", "8"]) == 0
    rec = json.loads(out.read_text())
    validate_record(rec)
    assert rec["best_epoch"] <= 3 and rec["best_metrics"]["top1"] > rec["metrics"]["top1"] + 20
    assert (rec["world_size"], rec["per_process_batch"], rec["epochs_run"]) == (1, 8, 4)
    assert not out.with_name("r.ckpt").exists()  # the checkpoint has served
    with pytest.raises(ValueError, match="'best_metrics' must be finite numbers, given with 'best_epoch'"):
        validate_record({k: v for k, v in rec.items() if k != "best_epoch"})


# ---------------------------------------------------------------------------- the paper protocol, precision


def _weights(recipe: str | None, dataset: str | None, method: str | None = None) -> ResolvedWeights:
    from wssl_zoo.methods import recipe_provenance

    method = method or (recipe_provenance(recipe)["method"].value if recipe else None)
    return ResolvedWeights(spec="x", kind="local", label="x", arch="resnet50", stem="imagenet", method=method,
                           img_size=224, weights_sha256="0" * 64,
                           config={"wssl_zoo": {k: v for k, v in dict(recipe=recipe, dataset=dataset).items() if v}})


@pytest.mark.parametrize("recipe,dataset,expected", [
    ("intl_m_imagenet", "imagenet", "intl"), ("intl_imagenet", "imagenet", "intl_plain"),
    ("intl_imagenet100", "imagenet100", "intl_plain"), ("cwrgp_imagenet", "imagenet", "cwrgp"),
    ("wmse_imagenet100", "imagenet100", "small"), ("wmse_imagenet", "imagenet", "small"),
    ("intl_cifar10", "cifar10", "small"), ("cwrgp_stl10", "stl10", "small"), ("wmse_tiny_imagenet", "tiny_imagenet", "small")])
def test_the_default_linear_protocol_is_the_models_paper_protocol(recipe, dataset, expected):
    name, why = paper_linear_protocol(_weights(recipe, dataset), "imagefolder")
    assert name == expected and "wssl-zoo/methods" not in why and "@" in why  # the authors' source is cited


def test_without_a_paper_protocol_the_default_is_the_quick_probe_and_says_so():
    assert paper_linear_protocol(_weights(None, None, "intl"), "imagefolder")[0] == "fast"
    name, why = paper_linear_protocol(_weights("intl_cifar10", "cifar10"), "stl10")  # transfer: no paper protocol
    assert name == "fast" and "pretrained on CIFAR-10 and is evaluated on STL-10" in why and "quick probe" in why
    assert paper_linear_protocol(resolve("random:resnet18:cifar:32"), "cifar10")[0] == "fast"


def test_a_cifar10_run_is_evaluated_with_small_and_says_so(tmp_path, capsys):
    data = colour_folder(tmp_path / "c10", held="test")  # --dataset cifar10 reads <split>/<class>/ folders
    run = tiny_model(tmp_path / "run", recipe="intl_cifar10", dataset="cifar10")
    out = tmp_path / "r.json"
    assert linear.main([*common(run, data, out)[:-4], "--device", "cpu", "--dataset", "cifar10", "--epochs", "2"]) == 0
    printed = capsys.readouterr().out
    assert "protocol small: the intl authors' protocol for models pretrained on CIFAR-10 (winci-ai/INTL@" in printed
    assert json.loads(out.read_text())["protocol"]["name"] == "small+epochs=2"


def test_amp_is_recorded_as_a_protocol_override_and_keyed_in_the_cache(model_dir, folder, tmp_path, cache):
    """float32 by default; --amp bf16 (CPU autocast here) gives other features, another cache entry and a
    record that never counts as the paper's protocol."""
    out = tmp_path / "k.json"
    assert knn.main([*common(model_dir, folder, out), "--protocols", "knn5", "--amp", "bf16"]) == 0
    rec = json.loads(out.read_text())
    assert rec["protocol"]["name"] == "knn5+amp=bf16" and rec["protocol"]["overrides"] == {"amp": "bf16"}
    assert is_full_evaluation(rec) == "protocol 'knn5' with amp=bf16"
    assert knn.main([*common(model_dir, folder, tmp_path / "f.json"), "--protocols", "knn5"]) == 0
    assert json.loads((tmp_path / "f.json").read_text())["protocol"]["name"] == "knn5"
    infos = [json.loads(p.read_text())["info"]["precision"] for p in cache.glob("*/index.json")]
    assert sorted(infos) == ["bf16", "bf16", "none", "none"]
    for module in (linear, semi, knn):
        assert module.build_parser().parse_args(["--model", "m", "--data", "d", *(["--split", "1pct"] if module is semi
                                                                                  else [])]).amp == "none"


# ---------------------------------------------------------------------------- checkpoints: refusals


def test_a_checkpoint_is_never_clobbered_and_a_wrong_resume_is_refused_naming_the_field(model_dir, folder, tmp_path,
                                                                                         capsys):
    out = tmp_path / "r.json"
    argv = [*common(model_dir, folder, out), "--protocol", "fast", "--epochs", "2", "--batch-size", "8"]
    assert linear.main([*argv, "--resume", "--keep-checkpoint"]) == 0
    assert "--resume: no checkpoint at" in capsys.readouterr().out  # nothing to resume: starts fresh, says so
    assert linear.main([*argv, "--resume"]) == 0  # finished (record, no checkpoint): not run again
    assert "finished" in capsys.readouterr().out
    ckpt, final = out.with_name("r.ckpt"), torch.load(out.with_name("r.final.ckpt"), weights_only=True)
    assert final["identity"]["world size"] == 1 and final["epoch"] == 2 and len(final["history"]) == 2
    torch.save(dict(final, epoch=1), ckpt)
    assert linear.main(argv) == 2  # no --resume: refused, naming the file
    err = capsys.readouterr().err
    assert f"{ckpt}: a checkpoint of this evaluation is there (epoch 1, step 0 of 2 epochs); pass --resume" in err
    for field, value in (("world size", 8), ("model hash", "f" * 64), ("data fingerprint", {"train": "x", "test": "y"}),
                         ("protocol", dict(final["identity"]["protocol"], lr=1.0))):
        torch.save(dict(final, epoch=1, identity=dict(final["identity"], **{field: value})), ckpt)
        assert linear.main([*argv, "--resume"]) == 2
        err = capsys.readouterr().err
        assert f"the checkpoint was written with another {field} (" in err and "refusing to resume" in err, err
    assert ckpt.is_file()  # left as it was
    torch.save(dict(final, epoch=1, history=final["history"][:1]), ckpt)  # the right one resumes
    assert linear.main([*argv, "--resume"]) == 0 and not ckpt.exists()
    assert "resuming from" in capsys.readouterr().out
    # --resume skips only a record of the same measurement: another model's run into that file is refused
    other = [*argv[:argv.index("--model") + 1], "random:test_resnet:imagenet:32", *argv[argv.index("--model") + 2:]]
    assert linear.main([*other, "--resume"]) == 2
    assert f"{out} holds another measurement" in capsys.readouterr().err


# ---------------------------------------------------------------------------- SIGKILL / SIGTERM + --resume


def _cli(module: str, args: list[str]):
    import warm

    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return warm.popen([sys.executable, "-m", module, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                      text=True, env=env, cwd=REPO)


def _epoch_of(ckpt: Path):
    try:
        data = torch.load(ckpt, weights_only=True)
        return data["epoch"], data["step"]
    except Exception:  # noqa: BLE001 - not written yet (replaced atomically)
        return None


def _wait_for_checkpoint(proc, ckpt: Path, epochs: int = 1):
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        seen = _epoch_of(ckpt) if ckpt.is_file() else None
        if seen is not None and seen[0] >= epochs:
            return seen
        time.sleep(0.005)
    raise AssertionError("the run ended before its checkpoint was seen:\n" + (proc.stdout.read() or ""))


def _final(out: Path) -> dict:
    """The kept last checkpoint of the run that wrote ``out``, less its wall time."""
    final = torch.load(out.with_name(out.stem + ".final.ckpt"), weights_only=True)
    return {k: v for k, v in final.items() if k != "seconds"}


def _same(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


# (module, arguments): each run is a few seconds of tiny steps, long enough to be stopped mid-way
KINDS = {
    "linear-cached": ("eval.linear", ["--protocol", "small", "--epochs", "60", "--batch-size", "8"]),
    "linear-augmented": ("eval.linear", ["--protocol", "cwrgp", "--epochs", "12", "--batch-size", "8"]),
    "semi": ("eval.semi", ["--split", "10pct", "--make-split-file", "SPLIT", "--percent", "50", "--epochs", "8",
                           "--batch-size", "4"]),
}


def _argv(kind: str, model_dir, folder, out: Path) -> tuple[str, list[str]]:
    module, extra = KINDS[kind]
    extra = [str(out.parent / "split.txt") if a == "SPLIT" else a for a in extra]
    return module, [*common(model_dir, folder, out), *extra, "--keep-checkpoint"]


def _records_match(a: Path, b: Path) -> None:
    ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    for key in ("metrics", "best_epoch", "best_metrics", "epochs_run", "protocol", "dataset", "weights_sha256"):
        assert ra[key] == rb[key], key


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_sigkill_mid_run_and_resume_end_where_an_uninterrupted_run_ends(model_dir, folder, tmp_path, kind):
    """The run is frozen (SIGSTOP) once its checkpoint holds an epoch, killed (SIGKILL: no handler runs),
    resumed with the same command and --resume: the final classifier / network, optimiser state,
    per-epoch test metrics and record equal those of an uninterrupted run, bit for bit (CPU, one thread)."""
    full_out, killed_out = tmp_path / "full" / "r.json", tmp_path / "killed" / "r.json"
    for out in (full_out, killed_out):
        out.parent.mkdir()
    module, argv = _argv(kind, model_dir, folder, killed_out)
    killed = _cli(module, argv)
    seen = _wait_for_checkpoint(killed, killed_out.with_name("r.ckpt"))
    killed.send_signal(signal.SIGSTOP)
    seen = _epoch_of(killed_out.with_name("r.ckpt"))
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    assert seen is not None and not killed_out.exists()
    module, full_argv = _argv(kind, model_dir, folder, full_out)
    full = _cli(module, full_argv)
    resumed = _cli(module, [*argv, "--resume"])
    output = resumed.stdout.read()
    assert resumed.wait(timeout=600) == 0, output
    assert f"at epoch {seen[0] + 1}, step {seen[1]}" in output, output
    assert full.wait(timeout=600) == 0, full.stdout.read()
    _records_match(full_out, killed_out)
    _same(_final(full_out), _final(killed_out))


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_at_the_next_step_exits_75_and_resumes(model_dir, folder, tmp_path):
    out = tmp_path / "r.json"
    module, argv = _argv("linear-augmented", model_dir, folder, out)
    proc = _cli(module, argv)
    _wait_for_checkpoint(proc, out.with_name("r.ckpt"))
    proc.send_signal(signal.SIGTERM)
    output = proc.stdout.read()
    assert proc.wait(timeout=120) == 75, output
    line = [x for x in output.splitlines() if x.startswith("eval.linear: stopped by SIGTERM")]
    assert len(line) == 1 and f"checkpoint written to {out.with_name('r.ckpt')}" in line[0], output
    assert "Resume with: python -m eval.linear " in line[0] and line[0].rstrip().endswith("--resume  (exit status 75)")
    assert _epoch_of(out.with_name("r.ckpt")) is not None and not out.exists()
    full = tmp_path / "full" / "r.json"
    full.parent.mkdir()
    for proc in (_cli(module, [*argv, "--resume"]), _cli(module, _argv("linear-augmented", model_dir, folder, full)[1])):
        output = proc.stdout.read()
        assert proc.wait(timeout=600) == 0, output
    _records_match(full, out)
    _same(_final(full), _final(out))


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs /proc to find the DataLoader workers")
def test_sigterm_to_every_process_of_the_job_as_slurm_sends_it_still_checkpoints(model_dir, folder, tmp_path):
    """SLURM signals every process of a job step, DataLoader workers included: the workers ignore it, the
    main process finishes the step, checkpoints and exits 75; the resumed run (2 workers) ends where a run
    without workers ends (the augmentations depend on (seed, epoch, index), not on the workers)."""
    out = tmp_path / "r.json"
    module, argv = _argv("linear-augmented", model_dir, folder, out)
    argv = [*argv[:argv.index("--workers")], "--workers", "2", *argv[argv.index("--workers") + 2:]]
    proc = _cli(module, argv)
    _wait_for_checkpoint(proc, out.with_name("r.ckpt"))
    workers = _children(proc.pid)
    assert len(workers) >= 2, workers
    for pid in (proc.pid, *workers):
        os.kill(pid, signal.SIGTERM)
    output = proc.stdout.read()
    assert proc.wait(timeout=120) == 75, output
    assert "eval.linear: stopped by SIGTERM" in output and "Traceback" not in output, output
    full = tmp_path / "full" / "r.json"
    full.parent.mkdir()
    for run in (_cli(module, [*argv, "--resume"]), _cli(module, _argv("linear-augmented", model_dir, folder, full)[1])):
        text = run.stdout.read()
        assert run.wait(timeout=600) == 0, text
    _records_match(full, out)
    _same(_final(full), _final(out))


# ---------------------------------------------------------------------------- 2 processes = 1 process


SCRIPT = """
import sys, torch
from eval import linear, semi
module = {"linear": linear, "semi": semi}[sys.argv[1]]
sys.exit(module.main(sys.argv[2:]))
"""


@pytest.mark.slow
@pytest.mark.gloo
@pytest.mark.parametrize("protocol", ["cwrgp", "small"])
def test_two_gloo_processes_train_the_classifier_of_one_process(model_dir, folder, tmp_path, protocol):
    """The authors' lincls under torchrun: 2 processes with 4 images each of every global batch of 8 give
    the classifier and metrics of 1 process with batches of 8. Tolerance: 1e-6 on the weights, and the
    metrics equal: the features of 4 and 8 images per forward, and the gradient summed by one matmul
    or by two and an all-reduce, differ in the last bits of float32 (summation order), nothing more."""
    import warm

    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    outs = {}
    for world in (1, 2):
        out = tmp_path / f"w{world}" / "r.json"
        out.parent.mkdir()
        extra = {"cwrgp": ["--epochs", "3"], "small": ["--epochs", "5"]}[protocol]
        args = [str(script), "linear", *common(model_dir, folder, out), "--protocol", protocol, "--batch-size", "8",
                *extra, "--keep-checkpoint"]
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "WSSL_ZOO_CACHE": str(tmp_path / f"c{world}")}
        run = warm.torchrun(world, args, cwd=REPO, timeout=300, env=env) if world == 2 else \
            warm.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        outs[world] = out
    one, two = (json.loads(outs[w].read_text()) for w in (1, 2))
    assert (one["world_size"], one["per_process_batch"], two["world_size"], two["per_process_batch"]) == (1, 8, 2, 4)
    assert one["metrics"] == two["metrics"] and one["best_metrics"] == two["best_metrics"]
    a, b = (_final(outs[w])["state"]["classifier"] for w in (1, 2))
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=0, atol=1e-6), (key, float((a[key] - b[key]).abs().max()))
    # the features the 2 processes extracted: one shard per rank (the test split; the training split too for small)
    shards = [len(json.loads(p.read_text())["shards"]) for p in (tmp_path / "c2").glob("*/index.json")]
    assert shards == [2] * (2 if protocol == "small" else 1)


@pytest.mark.slow
@pytest.mark.gloo
def test_in_memory_extraction_of_the_monitor_gives_every_rank_the_matrix_of_one_process(tmp_path):
    """extract_features (the pretraining monitor's few thousand images) under 2 gloo processes: each rank
    extracts its block (11 of 21 rows, then 10), the blocks are all-gathered as tensors, every rank
    holds one process's matrix in order."""
    import warm

    script = tmp_path / "x.py"
    script.write_text(
        "import sys, torch, torch.distributed as dist\n"
        "from torch.utils.data import TensorDataset\n"
        "from wssl_zoo.evaluation import extract_features\n"
        "dist.init_process_group('gloo')\n"
        "x = torch.arange(21 * 3, dtype=torch.float32).view(21, 3)\n"
        "torch.manual_seed(0)\n"
        "feats, labels = extract_features(torch.nn.Linear(3, 4), TensorDataset(x, torch.arange(21)), batch_size=4,"
        " workers=0)\n"
        "torch.save((feats, labels), f'{sys.argv[1]}.{dist.get_rank()}')\n"
        "dist.destroy_process_group()\n")
    run = warm.torchrun(2, [str(script), str(tmp_path / "out")], cwd=REPO, timeout=300,
                        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    torch.manual_seed(0)  # the Linear(3, 4) every rank built
    with torch.no_grad():
        one = torch.nn.Linear(3, 4)(torch.arange(21 * 3, dtype=torch.float32).view(21, 3))
    for rank in (0, 1):
        feats, labels = torch.load(tmp_path / f"out.{rank}")
        assert labels.tolist() == list(range(21)) and torch.allclose(feats, one, rtol=0, atol=1e-5)


@pytest.mark.slow
@pytest.mark.gloo
def test_semi_under_two_processes_records_the_world_and_per_process_batch(model_dir, folder, tmp_path):
    """Fine-tuning as the authors ran it: DDP, BN statistics per process (no SyncBN), so the record says
    how it ran; the run resumes only at the same world size."""
    import warm

    out = tmp_path / "semi.json"
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    args = [str(script), "semi", *common(model_dir, folder, out), "--split", "10pct", "--make-split-file",
            str(tmp_path / "split.txt"), "--percent", "50", "--epochs", "2", "--batch-size", "4", "--keep-checkpoint"]
    run = warm.torchrun(2, args, cwd=REPO, timeout=300,
                        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
                             "WSSL_ZOO_CACHE": str(tmp_path / "c")})
    assert run.returncode == 0, run.stderr[-3000:]
    rec = json.loads(out.read_text())
    validate_record(rec)
    assert (rec["world_size"], rec["per_process_batch"], rec["sync_batchnorm"]) == (2, 2, False)
    final = tmp_path / "semi.final.ckpt"
    final.rename(tmp_path / "semi.ckpt")  # as if the 2-process run had been stopped: one process may not resume it
    assert semi.main([*args[2:], "--resume"]) == 2
