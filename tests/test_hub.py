"""Publishing and downloading through the real huggingface_hub client against a local Hub server."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import wssl_zoo
from wssl_zoo.cli import main
from wssl_zoo.fileio import sha256_file
from wssl_zoo.hub import HashMismatchError, HubError
from wssl_zoo.modelio import save_model_dir
from wssl_zoo.publish import publish, update_registry_hub
from wssl_zoo.registry import clear_cache, default_registry_dir, get_entry, tomllib

from builders import FPN_FAST, authors_resnet, colour_folder, head, intl_ckpt, make_coco
from hub_server import HubServer, lfs_pointer

REPO = Path(__file__).resolve().parent.parent
ENTRY = "cwrgp_resnet18_cifar10"
REPO_ID = "wssl-zoo/cwrgp_resnet18_cifar10"


def _randomised(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=gen) + 0.5)
            elif name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=gen) * 0.1)
    return model.eval()


def make_run_dir(folder: Path, stem: str = "cifar", seed: int = 0, img_size: int = 32) -> torch.nn.Module:
    """A directory shaped like a pretraining output (weights, config, projector, logs)."""
    from wssl_zoo.heads import Projector

    model = _randomised(wssl_zoo.create("resnet18", stem=stem), seed)
    projector = _randomised(Projector(512, 64, 32, 2), seed + 1)
    save_model_dir(folder, model, arch="resnet18", stem=stem, mean=(0.4914, 0.4822, 0.4465),
                   std=(0.2023, 0.1994, 0.2010), img_size=img_size, projector=projector)
    (folder / "train_config.json").write_text(json.dumps({"recipe": {"name": "cwrgp_cifar10_2views", "method": "cwrgp",
                                                                     "dataset": "cifar10", "epochs": 1}}))
    (folder / "summary.json").write_text(json.dumps({"wall_seconds": 1.0}))
    (folder / "log.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
    return model


def features(model: torch.nn.Module, size: int = 32) -> torch.Tensor:
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return model.eval()(x)


def _point_the_client_at(server: HubServer, cache: Path, mp: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    mp.setattr(constants, "ENDPOINT", server.url)
    mp.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}")
    mp.setattr(constants, "HF_HUB_CACHE", str(cache))
    mp.setattr(constants, "HF_HUB_OFFLINE", False)
    mp.setenv("HF_TOKEN", server.token)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A running local Hub; the client's endpoint, cache and token point at it and at tmp_path."""
    with HubServer() as server:
        _point_the_client_at(server, tmp_path / "hf-cache", monkeypatch)
        yield server


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """A writable copy of the registry (publish pins entries in it) and a cards folder."""
    folder = tmp_path / "registry"
    shutil.copytree(default_registry_dir(), folder)
    monkeypatch.setenv("WSSL_ZOO_REGISTRY", str(folder))
    clear_cache()
    yield folder
    clear_cache()


@pytest.fixture(scope="module")
def _published_once(tmp_path_factory):
    """One publish of the cwrgp_resnet18_cifar10 entry per module (a 45 MB upload): the Hub's repos,
    the pinned TOML, the cards and the run directory, for ``published`` to restore in each test."""
    root = tmp_path_factory.mktemp("published")
    folder = root / "registry"
    shutil.copytree(default_registry_dir(), folder)
    with pytest.MonkeyPatch.context() as mp, HubServer() as server:
        _point_the_client_at(server, root / "hf-cache", mp)
        mp.setenv("WSSL_ZOO_REGISTRY", str(folder))
        clear_cache()
        model = make_run_dir(root / "run")
        result = publish(str(root / "run"), REPO_ID, cards_dir=root / "cards", progress=lambda *a: None)
        repos, counter = server.repos, server._counter
    clear_cache()
    return root, model, result, repos, counter


@pytest.fixture
def published(_published_once, tmp_path, hub, registry):
    """The cwrgp_resnet18_cifar10 entry published from ``tmp_path/run`` into this test's Hub and
    registry (restored from the module's one publish); returns (model, result)."""
    root, model, result, repos, counter = _published_once
    hub.repos.update(copy.deepcopy(repos))  # bytes are shared, commits and branches are this test's own
    hub._counter = counter
    shutil.copyfile(root / "registry" / f"{ENTRY}.toml", registry / f"{ENTRY}.toml")
    shutil.copytree(root / "cards", tmp_path / "cards")
    shutil.copytree(root / "run", tmp_path / "run")
    clear_cache()
    return model, result


# ---------------------------------------------------------------------------- publish


def test_publish_uploads_pins_the_entry_and_load_returns_the_same_weights(published, registry, tmp_path, hub):
    model, result = published
    assert result.entry == ENTRY and len(result.revision) == 40
    pinned = tomllib.loads((registry / f"{ENTRY}.toml").read_text())["hub"]
    assert pinned["revision"] == result.revision
    assert set(pinned["files"]) == {"model.safetensors", "config.json", "projector.safetensors"}
    assert pinned["files"]["model.safetensors"] == sha256_file(tmp_path / "run" / "model.safetensors")
    assert pinned["sizes"]["model.safetensors"] == (tmp_path / "run" / "model.safetensors").stat().st_size
    # everything else in the TOML is untouched
    before = tomllib.loads((default_registry_dir() / f"{ENTRY}.toml").read_text())
    after = tomllib.loads((registry / f"{ENTRY}.toml").read_text())
    assert {k: v for k, v in before.items() if k != "hub"} == {k: v for k, v in after.items() if k != "hub"}
    repo = hub.repos[REPO_ID].commits[result.revision].files
    assert {"model.safetensors", "config.json", "projector.safetensors", "train_config.json", "summary.json",
            "log.jsonl", "README.md", "SHA256SUMS"} <= set(repo)
    card = (tmp_path / "cards" / f"{ENTRY}.md").read_text()
    assert result.revision in card and "not published yet" not in card
    loaded = wssl_zoo.load(ENTRY)
    assert torch.equal(features(loaded), features(model))
    assert wssl_zoo.get_entry("cwrgp_r18_c10").hub.published


def test_the_hub_readme_carries_metadata_and_sums_cover_every_file(published, hub):
    _, result = published
    files = hub.repos[REPO_ID].commits[result.revision].files
    readme = files["README.md"].decode()
    front = readme.split("---\n")[1]
    for line in ("license: apache-2.0", "- self-supervised-learning", "- cwrgp", "- cifar10"):
        assert line in front.splitlines(), line
    assert "library_name: timm" not in front  # the cifar stem is not a timm architecture
    import hashlib

    sums = dict(reversed(line.split("  ")) for line in files["SHA256SUMS"].decode().splitlines())
    assert set(sums) == set(files) - {"SHA256SUMS", ".gitattributes"}
    for name, digest in sums.items():
        assert hashlib.sha256(files[name]).hexdigest() == digest, name


def test_model_index_lists_measured_results_of_these_weights(tmp_path, registry):
    from wssl_zoo.cards import render_card

    run = tmp_path / "run"
    make_run_dir(run)
    digest = sha256_file(run / "model.safetensors")
    results = tmp_path / "results"
    results.mkdir()
    from wssl_zoo.records import make_record, write_record

    def record(sha, metrics):
        return make_record(task="linear", model="run", weights_sha256=sha, protocol={"name": "fast", "version": 1},
                           dataset={"name": "cifar10", "fingerprint": "0" * 16}, seed=0, metrics=metrics,
                           wall_seconds=1.0, command="test")

    write_record(record(digest, {"top1": 41.5, "top5": 88.25}), results / "linear_x.json")
    write_record(record("0" * 64, {"top1": 99.0}), results / "other.json")
    (results / "notes.json").write_text(json.dumps({"comment": "not a record"}))  # skipped by the one reader
    import dataclasses

    from wssl_zoo.registry import HubInfo

    entry = dataclasses.replace(get_entry(ENTRY), hub=HubInfo(REPO_ID, "", {"model.safetensors": digest}))
    card = render_card(entry, for_hub=True, results_dir=results)
    front = card.split("---\n")[1]
    assert "model-index:" in front and "value: 41.5" in front and "value: 88.25" in front and "99.0" not in front
    assert "| 41.50 | measured, protocol fast v1: `zoo/results/linear_x.json` |" in card


@pytest.mark.slow
def test_a_detection_record_of_a_published_registry_model_reaches_its_card(tmp_path, hub, registry, capsys):
    """detection.train on the registry name of a published entry records the weights file's sha256
    (the one the entry pins), so the card of the entry lists the detection numbers."""
    from detection import train
    from wssl_zoo.cards import render_card

    run = tmp_path / "run"
    model = _randomised(wssl_zoo.create("resnet50"), 0)  # detection needs the imagenet stem: a ResNet-50 entry
    save_model_dir(run, model, arch="resnet50", stem="imagenet", mean=(0.485, 0.456, 0.406),
                   std=(0.229, 0.224, 0.225), img_size=224)
    (run / "train_config.json").write_text(json.dumps({"recipe": {"name": "intl_m_imagenet_800ep", "method": "intl",
                                                                  "dataset": "imagenet", "epochs": 1}}))
    publish(str(run), "wssl-zoo/intl_resnet50", cards_dir=tmp_path / "cards", progress=lambda *a: None)
    clear_cache()
    entry = get_entry("intl_r50")
    assert entry.hub.published
    results = tmp_path / "results"
    record = results / "coco.json"
    argv = ["--model", "intl_r50", "--config", "coco_R_50_FPN_1x", "--coco-root", str(make_coco(tmp_path / "coco")),
            "--out", str(tmp_path / "det"), "--max-iter", "1", "--ims-per-batch", "2", "--workers", "0",
            "--no-progress", "--backend", "torchvision", "--record", str(record)]
    for item in FPN_FAST + ["MODEL.MASK_ON=False"]:
        argv += ["--set", item]
    assert train.main(argv) == 0, capsys.readouterr().err
    rec = json.loads(record.read_text())
    assert rec["weights_sha256"] == entry.hub.files["model.safetensors"] == sha256_file(run / "model.safetensors")
    assert rec["model_label"] == entry.name  # one label for the entry, whatever the spec (alias) was
    card = render_card(entry, results_dir=results)
    rows = [line for line in card.splitlines() if "`zoo/results/coco.json`" in line]
    assert any(line.startswith("| bbox_AP |") and "| measured, protocol coco_R_50_FPN_1x+" in line for line in rows), rows


def _readme(staging: Path) -> tuple[dict, str]:
    from huggingface_hub import ModelCard

    card = ModelCard((staging / "README.md").read_text())
    return card.data.to_dict(), card.text


def test_a_2_epoch_run_published_under_an_entry_gets_a_card_that_says_2_epochs(tmp_path, registry):
    from wssl_zoo.publish import stage

    run = tmp_path / "run"
    make_run_dir(run)
    (run / "train_config.json").write_text(json.dumps({
        "recipe": {"name": "cwrgp_cifar10_2views", "method": "cwrgp", "dataset": "cifar10", "epochs": 2,
                   "lr": 0.5, "source": "https://example.org/authors@abc"}, "options": {"train_subset": None}}))
    stage(str(run), REPO_ID, tmp_path / "staged")
    meta, text = _readme(tmp_path / "staged")
    assert "Pretrained for **2 epochs** on CIFAR-10 (the full training set)" in text
    assert "for 1000 epochs" not in text and "not published" not in text
    assert "these weights had 2 epochs, so the entry's paper numbers are not theirs" in text
    assert meta["license"] == "apache-2.0" and "library_name" not in meta  # cifar stem: not a timm model
    assert f'wssl_zoo.load("hf-hub:{REPO_ID}")' in text and "pip install" in text


def test_model_index_holds_only_comparable_results_with_hub_task_ids(tmp_path, registry):
    """Against the real zoo/results records of the 2-epoch INTL run: no effective rank, no toy
    detection run, no pretrain_eval duplicates, no '+' overrides, no wssl-zoo-only protocol."""
    import dataclasses

    from huggingface_hub import ModelCard

    from wssl_zoo.cards import RESULTS_DIR, render_card
    from wssl_zoo.registry import HubInfo

    digest = json.loads((RESULTS_DIR / "pretrain_intl_cifar10_imagenet_e2.json").read_text())["weights_sha256"]
    entry = dataclasses.replace(get_entry("intl_resnet18_cifar10"), hub=HubInfo(REPO_ID, "", {"model.safetensors": digest}))
    card = ModelCard(render_card(entry, for_hub=True))
    results = card.data.eval_results
    assert {(r.task_type, r.metric_name, r.metric_value) for r in results} == {
        ("image-classification", "knn5 v2 top-1", 45.88), ("image-classification", "knn200 v1 top-1", 48.37)}
    assert all(r.dataset_type == "cifar10" and r.metric_type == "accuracy" for r in results)
    text = str(card)
    assert "effective_rank" not in text.split("---")[1] and "COCO" not in text.split("---")[1]


def test_every_checked_in_card_parses_with_huggingface_hub(registry):
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard import metadata_load

    from wssl_zoo.cards import CARDS_DIR

    for path in sorted(CARDS_DIR.glob("*.md")):
        meta = metadata_load(path)
        card = ModelCard.load(path)
        assert meta["license"] in ("apache-2.0", "other"), path
        assert (meta.get("library_name") == "timm") == (get_entry(path.stem).stem == "imagenet"), path
        for r in card.data.eval_results or []:
            assert r.task_type in ("image-classification", "object-detection", "image-segmentation"), path
            assert "rank" not in r.metric_name and "+" not in (r.task_name or ""), path


def test_dry_run_stages_without_uploading_or_pinning(tmp_path, hub, registry, capsys):
    run = tmp_path / "run"
    make_run_dir(run)
    staging = tmp_path / "staged"
    before = (registry / f"{ENTRY}.toml").read_text()
    assert main(["publish", str(run), "--repo", REPO_ID, "--dry-run", "--staging", str(staging)]) == 0
    out = capsys.readouterr().out
    assert "dry run: nothing uploaded" in out and ENTRY in out
    assert {p.name for p in staging.iterdir()} == {"model.safetensors", "config.json", "projector.safetensors",
                                                    "train_config.json", "summary.json", "log.jsonl", "README.md",
                                                    "SHA256SUMS"}
    assert not [r for r in hub.requests if r[0] == "POST"]
    assert (registry / f"{ENTRY}.toml").read_text() == before


def test_publish_without_a_token_or_with_a_wrong_entry_is_a_clear_error(tmp_path, hub, registry, monkeypatch, capsys):
    run = tmp_path / "run"
    make_run_dir(run)
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-home"))
    monkeypatch.setattr("huggingface_hub.constants.HF_TOKEN_PATH", str(tmp_path / "empty-home" / "token"))
    assert main(["publish", str(run), "--repo", REPO_ID]) == 2
    assert "no Hugging Face token" in capsys.readouterr().err
    monkeypatch.setenv("HF_TOKEN", hub.token)
    assert main(["publish", str(run), "--repo", "org/x", "--entry", "intl_resnet50", "--dry-run",
                 "--staging", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "resnet18 (cifar stem)" in err and "'intl_resnet50' is a resnet50 (imagenet stem)" in err
    assert main(["publish", str(tmp_path / "nope"), "--repo", REPO_ID]) == 2
    assert "no such model directory" in capsys.readouterr().err


def test_plain_timm_hf_hub_gives_the_same_features(tmp_path, hub, registry):
    import timm

    run = tmp_path / "run"
    model = make_run_dir(run, stem="imagenet", img_size=64)
    result = publish(str(run), "someone/r18-imagenet-stem", progress=lambda *a: None)
    assert result.entry is None and result.registry_file is None
    spec = f"hf-hub:someone/r18-imagenet-stem@{result.revision}"
    ours = wssl_zoo.load(spec)
    theirs = timm.create_model(spec, pretrained=True, num_classes=0)
    assert torch.equal(features(theirs, 64), features(ours, 64))
    assert torch.equal(features(ours, 64), features(model, 64))
    assert theirs.pretrained_cfg["mean"] == (0.4914, 0.4822, 0.4465) or list(theirs.pretrained_cfg["mean"]) == [0.4914, 0.4822, 0.4465]


def test_timm_fine_tunes_a_published_model_with_new_classes_and_channels(tmp_path, hub, registry):
    """The most common timm use: pretrained=True with num_classes=10 (and in_chans=1), one SGD step."""
    import timm
    import timm.data

    run = tmp_path / "run"
    model = make_run_dir(run, stem="imagenet", img_size=64)
    result = publish(str(run), "someone/r18-ft", progress=lambda *a: None)
    spec = f"hf-hub:someone/r18-ft@{result.revision}"
    clf = timm.create_model(spec, pretrained=True, num_classes=10)
    assert clf.get_classifier().out_features == 10
    assert torch.equal(clf.conv1.weight, model.conv1.weight)
    assert timm.data.resolve_data_config(model=clf)["input_size"] == (3, 64, 64)
    assert timm.data.resolve_data_config(model=clf)["interpolation"] == "bilinear"
    gray = timm.create_model(spec, pretrained=True, num_classes=10, in_chans=1)
    assert gray.conv1.weight.shape[1] == 1
    assert torch.allclose(gray.conv1.weight, model.conv1.weight.sum(1, keepdim=True))
    maps = timm.create_model(spec, pretrained=True, features_only=True)
    assert [f.shape[1] for f in maps(torch.randn(1, 3, 64, 64))] == [64, 64, 128, 256, 512]
    for net, chans in ((clf, 3), (gray, 1)):
        net.train()
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        x = torch.randn(4, chans, 64, 64, generator=torch.Generator().manual_seed(0))
        loss = torch.nn.functional.cross_entropy(net(x), torch.tensor([0, 1, 2, 3]))
        loss.backward()
        before = net.get_classifier().weight.detach().clone()
        opt.step()
        assert torch.isfinite(loss) and not torch.equal(net.get_classifier().weight, before)


def test_small_stems_are_refused_by_timm_by_name_and_load_with_wssl_zoo(published, hub, tmp_path):
    """The cifar/small stems are no timm architecture: timm stops with an error naming wssl_zoo.load,
    also for a deep-stem arch whose weights have the shapes of the imagenet stem (resnet26d)."""
    import timm

    _, result = published
    with pytest.raises(RuntimeError, match=r"Unknown model \(resnet18 with the wssl-zoo cifar stem.*wssl_zoo.load\)"):
        timm.create_model(f"hf-hub:{REPO_ID}@{result.revision}", pretrained=True, num_classes=10)
    deep = tmp_path / "deep"
    model = _randomised(wssl_zoo.create("resnet26d", stem="small"), 4)
    assert model.conv1[0].weight.shape == timm.create_model("resnet26d").conv1[0].weight.shape  # would load silently
    save_model_dir(deep, model, arch="resnet26d", stem="small", mean=(0.5,) * 3, std=(0.5,) * 3, img_size=64)
    with pytest.raises(RuntimeError, match="resnet26d with the wssl-zoo small stem"):
        timm.create_model(f"local-dir:{deep}", pretrained=True)
    assert torch.equal(features(wssl_zoo.load(deep), 64), features(model, 64))
    assert not wssl_zoo.load(deep).pretrained_cfg["architecture"].count(" ")


def test_wssl_zoo_loads_a_plain_timm_repo_without_its_classifier(tmp_path, hub, caplog):
    import timm
    from timm.models._hub import save_for_hf

    torch.manual_seed(0)
    supervised = _randomised(timm.create_model("resnet18", num_classes=7), 5)
    save_for_hf(supervised, str(tmp_path / "timm"), safe_serialization=True)
    hub.create_repo("timm/r18-sup")
    commit = hub.commit_files("timm/r18-sup", {p.name: p.read_bytes() for p in (tmp_path / "timm").iterdir()})
    with caplog.at_level("WARNING", logger="wssl_zoo"):
        ours = wssl_zoo.load(f"hf-hub:timm/r18-sup@{commit}")  # a plain timm repo: verified by the Hub's hashes
    assert "classifier (fc.weight, fc.bias) was dropped" in caplog.text
    supervised.reset_classifier(0)
    assert torch.equal(features(ours, 64), features(supervised, 64))
    assert ours.pretrained_cfg["num_classes"] == 0 and "hf_hub_id" not in ours.pretrained_cfg


# ---------------------------------------------------------------------------- download


def test_pinned_revision_keeps_its_weights_after_a_later_commit(published, hub, tmp_path):
    model, result = published
    other = make_run_dir(tmp_path / "other", seed=7)
    new_weights = (tmp_path / "other" / "model.safetensors").read_bytes()
    sums = hub.repos[REPO_ID].commits[result.revision].files["SHA256SUMS"].decode()
    sums = sums.replace(sha256_file(tmp_path / "run" / "model.safetensors"), sha256_file(tmp_path / "other" / "model.safetensors"))
    hub.commit_files(REPO_ID, {"model.safetensors": new_weights, "SHA256SUMS": sums.encode()}, "retrain")
    assert torch.equal(features(wssl_zoo.load(ENTRY)), features(model))  # the registry pins the old commit
    assert torch.equal(features(wssl_zoo.load(f"hf-hub:{REPO_ID}")), features(other))  # main moved on
    assert torch.equal(features(wssl_zoo.load(f"hf-hub:{REPO_ID}@{result.revision}")), features(model))


def test_a_tampered_file_is_refused_and_not_left_in_the_cache(published, hub, tmp_path):
    _, result = published
    cache = Path(tmp_path / "hf-cache")
    shutil.rmtree(cache, ignore_errors=True)
    good = hub.repos[REPO_ID].commits[result.revision].files["model.safetensors"]
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    hub.tamper(REPO_ID, result.revision, "model.safetensors", bytes(bad))
    import hashlib

    with pytest.raises(HashMismatchError) as info:
        wssl_zoo.load(ENTRY)
    msg = str(info.value)
    assert "'model.safetensors'" in msg and hashlib.sha256(good).hexdigest() in msg
    assert hashlib.sha256(bytes(bad)).hexdigest() in msg and "deleted" in msg
    blobs = cache / f"models--{REPO_ID.replace('/', '--')}" / "blobs"
    assert not [p for p in blobs.iterdir() if hashlib.sha256(p.read_bytes()).hexdigest() == hashlib.sha256(bytes(bad)).hexdigest()]
    snapshot = blobs.parent / "snapshots" / result.revision / "model.safetensors"
    assert not snapshot.exists() and not snapshot.is_symlink()
    # the hf-hub: route checks SHA256SUMS the same way
    with pytest.raises(HashMismatchError):
        wssl_zoo.load(f"hf-hub:{REPO_ID}@{result.revision}")
    hub.tampered.clear()  # the mirror is repaired: a fresh, correct download
    wssl_zoo.load(ENTRY)


def test_offline_from_the_cache_and_a_clear_error_for_what_is_not_cached(published, hub, monkeypatch):
    model, result = published
    wssl_zoo.load(ENTRY)  # fills the cache
    wssl_zoo.load(f"hf-hub:{REPO_ID}@{result.revision}")
    hub.stop()
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    assert torch.equal(features(wssl_zoo.load(ENTRY)), features(model))
    assert torch.equal(features(wssl_zoo.load(f"hf-hub:{REPO_ID}@{result.revision}")), features(model))
    with pytest.raises(HubError, match="HF_HUB_OFFLINE is set and the file is not in the cache"):
        wssl_zoo.load("hf-hub:someone/never-downloaded")


@pytest.mark.slow
def test_environment_variables_are_honoured_in_a_fresh_process(published, hub, registry, tmp_path):
    """HF_ENDPOINT and HF_HOME select the Hub and the cache; HF_HUB_OFFLINE=1 then loads from it.
    Each command runs in a new process forked from tests/warm.py's zygote, which has not imported
    huggingface_hub, timm or wssl_zoo (tests/test_warm.py checks that): every module that reads
    these variables reads them in that process, as in a new interpreter."""
    import warm

    model, _ = published
    env = dict(os.environ, HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "home"), WSSL_ZOO_REGISTRY=str(registry),
               PYTHONPATH=str(REPO))
    env.pop("HF_HUB_CACHE", None)
    code = ("import sys, torch, wssl_zoo; m = wssl_zoo.load(sys.argv[1]); "
            "x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3)); "
            "torch.save(m.eval()(x).detach(), sys.argv[2])")
    out1, out2 = tmp_path / "f1.pt", tmp_path / "f2.pt"
    run = warm.run([sys.executable, "-c", code, ENTRY, str(out1)], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert list((tmp_path / "home" / "hub").glob("models--wssl-zoo--cwrgp_resnet18_cifar10/snapshots/*/model.safetensors"))
    hub.stop()
    run = warm.run([sys.executable, "-c", code, ENTRY, str(out2)], env=dict(env, HF_HUB_OFFLINE="1"),
                   capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert torch.equal(torch.load(out1), features(model)) and torch.equal(torch.load(out2), features(model))


class _TimeWithoutSleep:
    """The ``time`` module without its waits, for the client's 1-s pause before each resumed download."""

    def __getattr__(self, name):
        import time

        return getattr(time, name)

    @staticmethod
    def sleep(_seconds):
        pass


def test_a_dropped_connection_resumes_or_fails_clearly_never_loading_a_partial_file(published, hub, tmp_path,
                                                                                    monkeypatch):
    model, result = published
    # huggingface_hub sleeps 1 s before each of its up to 5 resume attempts: waiting, not behaviour
    monkeypatch.setattr("huggingface_hub.file_download.time", _TimeWithoutSleep())
    cache = Path(tmp_path / "hf-cache")
    shutil.rmtree(cache, ignore_errors=True)
    hub.truncate_next["model.safetensors"] = 1  # one drop: the client resumes with a Range request
    assert torch.equal(features(wssl_zoo.load(ENTRY)), features(model))
    shutil.rmtree(cache)
    hub.truncate_next["model.safetensors"] = 1000  # the connection keeps dropping
    with pytest.raises(HubError, match=r"model.safetensors'.*download failed.*run the command again to resume"):
        wssl_zoo.load(ENTRY)
    snapshot = cache / "models--wssl-zoo--cwrgp_resnet18_cifar10" / "snapshots" / result.revision / "model.safetensors"
    assert not snapshot.exists()
    hub.truncate_next.clear()
    assert torch.equal(features(wssl_zoo.load(ENTRY)), features(model))


def test_eval_model_takes_a_registry_name_and_hf_hub(published, hub, tmp_path):
    """``python -m eval.linear --model`` with the published registry name, an alias and
    ``hf-hub:org/name@rev`` evaluates the published weights: the same weights hash and the same
    accuracy as the local model directory it was published from (each run with its own empty
    feature cache, so every one extracts features from the model it loaded)."""
    from eval import linear
    _, result = published
    data = colour_folder(tmp_path / "data")
    cache = tmp_path / "hf-cache"
    shutil.rmtree(cache, ignore_errors=True)
    specs = {"dir": str(tmp_path / "run"), "name": ENTRY, "alias": "cwrgp_r18_c10",
             "hf-hub": f"hf-hub:{REPO_ID}@{result.revision}"}
    records = {}
    for key, spec in specs.items():
        out = tmp_path / f"{key}.json"
        assert linear.main(["--model", spec, "--data", str(data), "--out", str(out), "--epochs", "5", "--no-progress",
                            "--workers", "0", "--cache-dir", str(tmp_path / f"features-{key}")]) == 0
        records[key] = json.loads(out.read_text())
        assert records[key]["cache_hit"] is False
        if key == "name":  # the registry name downloaded the pinned revision into the Hub cache
            assert list(cache.glob(f"models--wssl-zoo--{ENTRY}/snapshots/{result.revision}/model.safetensors"))
    weights = sha256_file(tmp_path / "run" / "model.safetensors")
    assert {r["weights_sha256"] for r in records.values()} == {weights}
    assert len({json.dumps(r["metrics"], sort_keys=True) for r in records.values()}) == 1
    assert records["hf-hub"]["model"] == specs["hf-hub"] and records["name"]["model"] == ENTRY


def test_missing_repo_revision_and_file_are_named(hub):
    with pytest.raises(HubError, match="the repository someone/nothing does not exist"):
        wssl_zoo.load("hf-hub:someone/nothing")
    hub.create_repo("someone/empty")
    with pytest.raises(HubError, match="'config.json': no such file"):
        wssl_zoo.load("hf-hub:someone/empty")
    with pytest.raises(HubError, match=f"the revision {'f' * 40!r} does not exist"):
        wssl_zoo.load(f"hf-hub:someone/empty@{'f' * 40}")


def test_registry_hash_mismatch_is_refused(published, registry):
    _, result = published
    path = registry / f"{ENTRY}.toml"
    digest = result.files["model.safetensors"]
    path.write_text(path.read_text().replace(digest, "ab" * 32))
    clear_cache()
    with pytest.raises(HashMismatchError, match=f"does not match the expected {'ab' * 32}"):
        wssl_zoo.load(ENTRY)


# ---------------------------------------------------------------------------- CLI


def test_cli_download_and_info(published, hub, capsys):
    _, result = published
    assert main(["download", "cwrgp_r18_c10"]) == 0
    out = capsys.readouterr().out
    assert f"{REPO_ID}@{result.revision}" in out and "model.safetensors: sha256" in out and "verified" in out
    hub.requests.clear()
    assert main(["info", ENTRY]) == 0
    out = capsys.readouterr().out
    assert "weights published: yes" in out and f"@ {result.revision}" in out
    size = result.sizes["model.safetensors"]
    assert f"model.safetensors: sha256 {result.files['model.safetensors']}, {size:,} bytes" in out
    assert hub.requests == []  # info never touches the network


def test_cli_download_errors_are_one_line(hub, registry, capsys):
    assert main(["download", "intl_resnet50"]) == 2
    err = capsys.readouterr().err
    assert "not published yet" in err and "Traceback" not in err
    assert main(["download", "hf-hub:someone/nothing"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_update_registry_hub_validates_before_writing(registry):
    path = registry / f"{ENTRY}.toml"
    before = path.read_text()
    with pytest.raises(ValueError, match="not a 40-hex commit"):
        update_registry_hub(path, REPO_ID, "main", {"model.safetensors": "a" * 64}, {"model.safetensors": 1})
    with pytest.raises(ValueError, match="sha256"):
        update_registry_hub(path, REPO_ID, "a" * 40, {"model.safetensors": "not-a-hash"}, {"model.safetensors": 1})
    assert path.read_text() == before


def test_update_registry_hub_keeps_comments_and_every_other_table(registry):
    path = registry / f"{ENTRY}.toml"
    text = path.read_text().replace("[hub]\n", "# pinned by wssl-zoo publish\n[hub]\n", 1)
    text = text.replace("[official]\n", "[official]  # the authors' own files\n", 1)
    path.write_text(text)
    update_registry_hub(path, REPO_ID, "b" * 40, {"model.safetensors": "c" * 64, "config.json": "d" * 64},
                        {"model.safetensors": 12, "config.json": 3})
    after = path.read_text()
    assert "# pinned by wssl-zoo publish\n[hub]\n" in after and "[official]  # the authors' own files\n" in after
    assert after.split("# pinned by")[0] == text.split("# pinned by")[0]  # everything before [hub] byte-identical
    hub = tomllib.loads(after)["hub"]
    assert hub == {"repo_id": REPO_ID, "revision": "b" * 40, "files": {"model.safetensors": "c" * 64, "config.json": "d" * 64},
                   "sizes": {"model.safetensors": 12, "config.json": 3}}
    assert get_entry(ENTRY).hub.published


def test_publish_a_registry_name_mirrors_its_verified_files(published, hub, tmp_path, registry):
    model, result = published
    mirror = publish(ENTRY, "backup/cwrgp_r18", entry_name=None, staging=None, progress=lambda *a: None,
                     cards_dir=tmp_path / "cards")
    # the entry matched by source name is re-pinned to the mirror
    assert mirror.entry == ENTRY and mirror.files["model.safetensors"] == result.files["model.safetensors"]
    clear_cache()
    assert get_entry(ENTRY).hub.repo_id == "backup/cwrgp_r18"
    assert torch.equal(features(wssl_zoo.load(ENTRY)), features(model))


def test_publish_takes_any_resolvable_source_an_hf_hub_repo_too(published, hub, tmp_path, registry):
    """stage() finds its source with wssl_zoo.weights.resolve: an hf-hub: repo (verified with its
    SHA256SUMS) stages like the directory it was published from; a random init is refused."""
    from wssl_zoo.publish import stage

    model, result = published
    hashes, _, entry = stage(f"hf-hub:{REPO_ID}@{result.revision}", "backup/r18", tmp_path / "staged",
                             entry_name=ENTRY)
    assert entry.name == ENTRY and hashes["model.safetensors"] == result.files["model.safetensors"]
    assert (tmp_path / "staged" / "projector.safetensors").is_file()
    with pytest.raises(ValueError, match=r"^random:resnet18: publish takes trained weights, not a random init$"):
        stage("random:resnet18", "backup/r18", tmp_path / "staged2")


@pytest.mark.slow
def test_the_readme_two_commands_turn_an_authors_checkpoint_into_a_pinned_entry(tmp_path, hub, registry):
    """`wssl-zoo convert` then `wssl-zoo publish`, on a checkpoint in INTL_M's layout (ResNet-50)."""
    import timm
    online, ema = authors_resnet("resnet50", "imagenet", 0), authors_resnet("resnet50", "imagenet", 1)
    ckpt = tmp_path / "intl_800ep.pth.tar"
    torch.save(intl_ckpt(online, head(2048, 64, 32, False, 2), (ema, head(2048, 64, 32, False, 3))), ckpt)
    out = tmp_path / "intl_resnet50"
    assert main(["convert", "--from", "official-intl", str(ckpt), "--entry", "intl_resnet50", "--out", str(out)]) == 0
    assert main(["publish", str(out), "--repo", "wssl-zoo/intl_resnet50", "--cards-dir", str(tmp_path / "cards")]) == 0
    clear_cache()
    entry = get_entry("intl_r50")
    assert entry.hub.published and set(entry.hub.files) == {"model.safetensors", "config.json", "projector.safetensors"}
    ours = wssl_zoo.load("intl_r50")
    theirs = timm.create_model(f"hf-hub:wssl-zoo/intl_resnet50@{entry.hub.revision}", pretrained=True, num_classes=0)
    expected = features(online, 64)
    assert torch.allclose(features(ours, 64), expected, atol=1e-4)
    assert torch.equal(features(theirs, 64), features(ours, 64))
    files = hub.repos["wssl-zoo/intl_resnet50"].commits[entry.hub.revision].files
    assert "convert.json" in files
    from huggingface_hub import ModelCard

    card = ModelCard(files["README.md"].decode())
    assert card.data.license == "other" and card.data.library_name == "timm"
    assert "Converted from the authors' checkpoint `intl_800ep.pth.tar`" in card.text
    assert entry.official["url"] in card.text and "the authors' repository carries no license" in card.text
    assert "sha256 `" + sha256_file(ckpt) + "`" in card.text and "not published" not in card.text


# ---------------------------------------------------------------------------- failure paths


def _tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("failure", ["upload fails", "read-back mismatch"])
def test_a_failed_publish_pins_nothing_and_leaves_the_registry_byte_identical(tmp_path, hub, registry, failure):
    run = tmp_path / "run"
    make_run_dir(run)
    before = _tree_bytes(registry)
    if failure == "upload fails":
        hub.fail_commits = True
        expected = (HubError, r"upload to wssl-zoo/cwrgp_resnet18_cifar10 failed.*nothing was pinned")
    else:
        hub.corrupt_uploads["model.safetensors"] = b"\0" * 64  # the Hub serves other bytes than were sent
        expected = (HashMismatchError, r"'model.safetensors'.*does not match")
    with pytest.raises(expected[0], match=expected[1]):
        publish(str(run), REPO_ID, cards_dir=tmp_path / "cards", progress=lambda *a: None)
    assert _tree_bytes(registry) == before
    assert not (tmp_path / "cards").exists()
    clear_cache()
    assert not get_entry(ENTRY).hub.published


def test_a_repo_whose_server_states_no_hashes_and_without_sha256sums_is_refused_unless_unverified_is_accepted(
        tmp_path, hub, registry, capsys):
    """A plain repo on the Hub loads verified by the Hub's hashes (test_a_plain_timm_repo_loads_verified_...);
    served by a mirror that gives files but no metadata, nothing vouches for it: refused, unless
    verify=False / --allow-unverified, which loads it and says which files went unchecked."""
    run = tmp_path / "run"
    model = make_run_dir(run)
    hub.create_repo("someone/plain")
    hub.commit_files("someone/plain", {n: (run / n).read_bytes() for n in ("config.json", "model.safetensors")})
    hub.file_metadata = False
    message = r"someone/plain@[0-9a-f]{40}: no SHA256SUMS file.*verify=False \(--allow-unverified"
    with pytest.raises(HubError, match=message):
        wssl_zoo.load("hf-hub:someone/plain")
    assert torch.equal(features(wssl_zoo.load("hf-hub:someone/plain", verify=False)), features(model))
    assert main(["download", "hf-hub:someone/plain"]) == 2
    err = capsys.readouterr().err
    assert "no SHA256SUMS file" in err and "--allow-unverified" in err and len(err.strip().splitlines()) == 1
    assert main(["download", "--allow-unverified", "hf-hub:someone/plain"]) == 0
    out = capsys.readouterr().out
    assert "  model.safetensors: NOT verified (no hash stated" in out and "config.json: NOT verified" in out
    from wssl_zoo.weights import resolve

    with pytest.raises(HubError, match="no SHA256SUMS"):
        resolve("hf-hub:someone/plain")
    assert resolve("hf-hub:someone/plain", verify=False).arch == "resnet18"


# ---------------------------------------------------------------------------- the local Hub itself


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _git_hash_object(data: bytes) -> str:
    """The git blob id as git itself computes it (not the code under test)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed: git blob ids are checked against `git hash-object`")
    run = subprocess.run(["git", "hash-object", "--stdin"], input=data, capture_output=True, check=True)
    return run.stdout.decode().strip()


def test_git_blob_id_is_what_git_hash_object_prints(tmp_path):
    from wssl_zoo.fileio import git_blob_id

    for name, data in (("empty", b""), ("text", b'{"a": 1}\n'), ("binary", bytes(range(256)) * 20)):
        (tmp_path / name).write_bytes(data)
        assert git_blob_id(tmp_path / name, chunk=1000) == _git_hash_object(data), name


def test_the_local_hub_states_file_metadata_as_the_hub_does(tmp_path, hub):
    """Through the client's own API: a file is in LFS by the Hub's default .gitattributes or when it is
    over 10 MiB (never when empty); git blob ids are git's (`git hash-object`), an LFS file's is that of
    its git-lfs pointer (bert-base-uncased's tf_model.h5, 536,063,208 bytes, has a 134-byte pointer, as
    huggingface.js's paths-info test records); paths-info, tree and model_info(files_metadata=True) agree;
    resolve gives the git blob id as ETag, or a redirect to the CDN with the sha256 as X-Linked-Etag,
    which name the cache's blobs; and huggingface_hub's own checksum verifier finds no mismatch."""
    from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url, snapshot_download

    api, repo = HfApi(), "someone/layout"
    files = {"config.json": b'{"a": 1}\n', "notes.txt": b"x" * (10 * 1024 * 1024 + 1), "small.txt": b"hello\n",
             "empty.bin": b"", "w.safetensors": bytes(range(256)) * 4, "sub/w.pt": b"\x01" * 10}
    hub.create_repo(repo)
    commit = hub.commit_files(repo, files)
    info = {f.path: f for f in api.get_paths_info(repo, list(files), revision=commit)}
    assert {p for p, f in info.items() if f.lfs} == {"notes.txt", "w.safetensors", "sub/w.pt"}
    for path, data in files.items():
        f = info[path]
        assert f.size == len(data), path
        if f.lfs:
            pointer = lfs_pointer(_sha(data), len(data))
            assert (f.lfs.sha256, f.lfs.size, f.lfs.pointer_size) == (_sha(data), len(data), len(pointer)), path
            assert f.blob_id == _git_hash_object(pointer), path
        else:
            assert f.blob_id == _git_hash_object(data), path
    assert len(lfs_pointer("a7a17d6d844b5de815ccab5f42cad6d24496db3850a2a43d8258221018ce87d2", 536063208)) == 134
    tree = {f.path: f for f in api.list_repo_tree(repo, revision=commit, recursive=True)}
    siblings = {s.rfilename: s for s in api.model_info(repo, revision=commit, files_metadata=True).siblings}
    for path, f in info.items():
        assert (tree[path].blob_id, tree[path].lfs, tree[path].size) == (f.blob_id, f.lfs, f.size), path
        assert (siblings[path].blob_id, siblings[path].lfs, siblings[path].size) == (f.blob_id, f.lfs, f.size), path
    lfs_head = get_hf_file_metadata(hf_hub_url(repo, "w.safetensors", revision=commit))
    assert (lfs_head.etag, lfs_head.size, lfs_head.commit_hash) == (_sha(files["w.safetensors"]), 1024, commit)
    assert lfs_head.location.startswith(hub.cdn_url + "/")
    git_head = get_hf_file_metadata(hf_hub_url(repo, "config.json", revision=commit))
    assert (git_head.etag, git_head.commit_hash) == (info["config.json"].blob_id, commit)
    folder = Path(snapshot_download(repo, revision=commit))
    assert {p.name for p in (folder.parent.parent / "blobs").iterdir()} == {
        f.lfs.sha256 if f.lfs else f.blob_id for p, f in tree.items()}
    assert api.verify_repo_checksums(repo, revision=commit).mismatches == []


# ---------------------------------------------------------------------------- hf-hub: verified by the Hub's hashes


def _plain_timm_repo(hub: HubServer, folder: Path, repo_id: str = "timm/r18-plain", seed: int = 5):
    """A repo as timm publishes one (timm's own save_for_hf: config.json and model.safetensors, no
    SHA256SUMS) committed on the local Hub; returns (the supervised model, the commit, the files)."""
    import timm
    from timm.models._hub import save_for_hf

    supervised = _randomised(timm.create_model("resnet10t", num_classes=7), seed)  # 20 MB: a small timm ResNet
    save_for_hf(supervised, str(folder / "timm"), safe_serialization=True)
    files = {p.name: p.read_bytes() for p in (folder / "timm").iterdir()}
    assert set(files) == {"config.json", "model.safetensors"}
    hub.create_repo(repo_id)
    return supervised, hub.commit_files(repo_id, files), files


def test_a_plain_timm_repo_loads_verified_by_the_hashes_the_hub_states(tmp_path, hub, monkeypatch, capsys):
    """No SHA256SUMS: the weights (an LFS file) are checked against the sha256 the Hub states at the
    commit, config.json (kept in git) against its git blob id. One load hashes the weights once, and a
    load pinned to a commit whose files and hashes are cached asks nothing of the Hub."""
    from wssl_zoo import fileio
    from wssl_zoo.hub import download_repo
    from wssl_zoo.weights import resolve

    supervised, commit, files = _plain_timm_repo(hub, tmp_path)
    snap = download_repo("hf-hub:timm/r18-plain")
    assert snap.commit == commit and snap.unverified == ()
    assert snap.sha256 == {n: _sha(data) for n, data in files.items()}
    assert snap.checked_against == {"model.safetensors": "the Hub's LFS sha256",
                                    "config.json": f"the Hub's git blob id {_git_hash_object(files['config.json'])}"}
    hashed = []
    real = fileio.sha256_file
    monkeypatch.setattr(fileio, "sha256_file", lambda path, *a: (hashed.append(Path(path).name), real(path, *a))[1])
    hub.requests.clear()
    weights = resolve(f"hf-hub:timm/r18-plain@{commit}")
    model = weights.build()
    assert hashed.count("model.safetensors") == 1 and weights.weights_sha256 == _sha(files["model.safetensors"])
    assert hub.requests == []  # the commit's files and the Hub's hashes of it were in the cache
    supervised.reset_classifier(0)
    assert torch.equal(features(model, 64), features(supervised, 64))
    assert torch.equal(features(wssl_zoo.load("hf-hub:timm/r18-plain"), 64), features(supervised, 64))
    # the command line prints what it verified, against what
    assert main(["download", "hf-hub:timm/r18-plain"]) == 0
    out = capsys.readouterr().out
    assert f"hf-hub:timm/r18-plain: timm/r18-plain@{commit} -> " in out
    weights = _sha(files["model.safetensors"])
    assert f"  model.safetensors: sha256 {weights} verified against the Hub's LFS sha256\n" in out
    assert (f"  config.json: sha256 {_sha(files['config.json'])} verified against the Hub's git blob id "
            f"{_git_hash_object(files['config.json'])}\n") in out



def test_a_tampered_file_of_a_plain_repo_is_refused_naming_the_file_and_both_hashes(tmp_path, hub):
    """The CDN serves other bytes than the Hub's metadata states: refused with both hashes and deleted
    from the cache, verify=False included (it only accepts files with no stated hash); a file kept in
    git is caught by its git blob id; once the bytes are right again the repo loads."""
    supervised, commit, files = _plain_timm_repo(hub, tmp_path)
    spec, cache = "hf-hub:timm/r18-plain", tmp_path / "hf-cache" / "models--timm--r18-plain"
    good = files["model.safetensors"]
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    hub.tamper("timm/r18-plain", commit, "model.safetensors", bytes(bad))
    for verify in (True, False):
        with pytest.raises(HashMismatchError) as info:
            wssl_zoo.load(spec, verify=verify)
        msg = str(info.value)
        assert (f"timm/r18-plain@{commit} file 'model.safetensors': sha256 {_sha(bytes(bad))} does not match the "
                f"expected {_sha(good)} (the sha256 the Hub states for this LFS file at this commit)") in msg
        assert "deleted from the cache" in msg and "\n" not in msg
        assert not [p for p in (cache / "blobs").iterdir() if _sha(p.read_bytes()) == _sha(bytes(bad))]
        assert not (cache / "snapshots" / commit / "model.safetensors").is_symlink()
    hub.tampered.clear()
    shutil.rmtree(cache)
    config = json.loads(files["config.json"])
    config["num_classes"] = 3
    forged = json.dumps(config).encode()
    hub.tamper("timm/r18-plain", commit, "config.json", forged)
    expected = _git_hash_object(files["config.json"])
    with pytest.raises(HashMismatchError, match=rf"'config.json': git blob id {_git_hash_object(forged)} does not "
                       rf"match the expected {expected} \(the git blob id the Hub states"):
        wssl_zoo.load(spec)
    hub.tampered.clear()
    supervised.reset_classifier(0)
    assert torch.equal(features(wssl_zoo.load(spec), 64), features(supervised, 64))


def test_a_sha256sums_that_disagrees_with_the_hub_is_refused_before_the_weights_are_downloaded(published, hub):
    """A repo we published carries SHA256SUMS; it must agree with the Hub. A stale line for the weights
    (an LFS file) is refused by comparing it with the Hub's sha256, before the download; one for
    config.json (kept in git) after checking the file against the Hub's git blob id."""
    _, result = published
    files = hub.repos[REPO_ID].commits[result.revision].files
    sums = files["SHA256SUMS"].decode()
    weights, config = _sha(files["model.safetensors"]), _sha(files["config.json"])
    commit = hub.commit_files(REPO_ID, {"SHA256SUMS": sums.replace(weights, "ab" * 32).encode()}, "a stale manifest")
    hub.requests.clear()
    with pytest.raises(HashMismatchError) as info:
        wssl_zoo.load(f"hf-hub:{REPO_ID}@{commit}")
    assert (f"{REPO_ID}@{commit} file 'model.safetensors': SHA256SUMS lists sha256 {'ab' * 32}, but the Hub states "
            f"{weights} for this LFS file") in str(info.value)
    assert not [path for _, path in hub.requests if path.endswith("/model.safetensors")]  # nothing downloaded
    commit = hub.commit_files(REPO_ID, {"SHA256SUMS": sums.replace(config, "cd" * 32).encode()}, "another one")
    with pytest.raises(HashMismatchError, match=rf"'config.json': SHA256SUMS lists sha256 {'cd' * 32}, but the file "
                       rf"that has the git blob id the Hub states \({_git_hash_object(files['config.json'])}\) has "
                       rf"sha256 {config}"):
        wssl_zoo.load(f"hf-hub:{REPO_ID}@{commit}")


def test_a_published_repo_is_verified_by_the_hub_and_its_sha256sums_and_by_sha256sums_alone_on_a_mirror(
        published, hub, tmp_path, capsys):
    model, result = published
    spec = f"hf-hub:{REPO_ID}@{result.revision}"
    assert main(["download", spec]) == 0
    out = capsys.readouterr().out
    files = hub.repos[REPO_ID].commits[result.revision].files
    for name in ("model.safetensors", "projector.safetensors"):
        assert f"  {name}: sha256 {_sha(files[name])} verified against the Hub's LFS sha256 and SHA256SUMS\n" in out
    assert (f"  config.json: sha256 {_sha(files['config.json'])} verified against the Hub's git blob id "
            f"{_git_hash_object(files['config.json'])} and SHA256SUMS\n") in out
    assert f"  SHA256SUMS: sha256 {_sha(files['SHA256SUMS'])} verified against the Hub's git blob id " in out
    from wssl_zoo.hub import download_repo

    hub.file_metadata = False  # a mirror without the Hub's metadata: the repo's SHA256SUMS vouches for its files
    shutil.rmtree(tmp_path / "hf-cache")
    snap = download_repo(spec)
    assert snap.checked_against == dict.fromkeys(("config.json", "model.safetensors", "projector.safetensors"),
                                                 "SHA256SUMS") and snap.unverified == ()
    assert torch.equal(features(wssl_zoo.load(spec)), features(model))


def test_offline_loads_of_a_plain_repo_stay_verified(tmp_path, hub, monkeypatch):
    """Online, the Hub's hashes of the commit are kept beside its snapshot; offline the cached bytes are
    checked against them (bytes changed on disk are refused). A cache another tool filled holds the
    files but not the Hub's hashes: refused, naming the command that keeps them, unless verify=False."""
    from huggingface_hub import constants, hf_hub_download

    from wssl_zoo.hub import download_repo

    supervised, commit, files = _plain_timm_repo(hub, tmp_path)
    _, other, other_files = _plain_timm_repo(hub, tmp_path / "other", "timm/r18-other", seed=6)
    for name in other_files:  # as `hf download` or timm would
        hf_hub_download("timm/r18-other", name, revision=other)
    spec = f"hf-hub:timm/r18-plain@{commit}"
    wssl_zoo.load(spec)
    cache = Path(constants.HF_HUB_CACHE) / "models--timm--r18-plain"
    kept = json.loads((cache / "wssl-zoo" / f"hub-files-{commit}.json").read_text())
    assert kept["files"]["model.safetensors"]["lfs_sha256"] == _sha(files["model.safetensors"])
    assert kept["files"]["SHA256SUMS"] is None  # the Hub said: no such file at this commit
    hub.stop()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    supervised.reset_classifier(0)
    assert torch.equal(features(wssl_zoo.load(spec), 64), features(supervised, 64))
    assert download_repo(spec).checked_against["model.safetensors"] == "the Hub's LFS sha256"
    blob = (cache / "snapshots" / commit / "model.safetensors").resolve()
    data = bytearray(blob.read_bytes())
    data[100] ^= 1
    blob.write_bytes(bytes(data))
    with pytest.raises(HashMismatchError, match=rf"'model.safetensors': sha256 {_sha(bytes(data))} does not match"):
        wssl_zoo.load(spec)
    message = (rf"timm/r18-other@{other}: no SHA256SUMS file and HF_HUB_OFFLINE is set and the Hub's file hashes of "
               rf"this commit are not in the cache \(a load while online keeps them: wssl-zoo download "
               rf"hf-hub:timm/r18-other@{other}\), so 'config.json', 'model.safetensors' cannot be verified; pass "
               rf"verify=False")
    with pytest.raises(HubError, match=message):
        wssl_zoo.load(f"hf-hub:timm/r18-other@{other}")
    assert download_repo(f"hf-hub:timm/r18-other@{other}", verify=False).unverified == ("config.json",
                                                                                         "model.safetensors")
