"""Semi-supervised fine-tuning (eval.semi): the 1% / 10% split files (checks, SimCLR's files, generated
splits, the split-file CLI), fine-tuning records, and fine-tuning under torchrun."""

from __future__ import annotations

import json
import os

import pytest
from PIL import Image

from eval import semi
from eval.records import validate_record
from wssl_zoo.fileio import sha256_file

from builders import EVAL_MAIN_SCRIPT
from conftest import REPO_ROOT, eval_args

pytestmark = pytest.mark.usefixtures("cache")  # a feature cache of its own for every test


def test_split_file_checks(colour_data, tmp_path, monkeypatch):
    from wssl_zoo.data import build_dataset

    train = build_dataset("imagefolder", colour_data, "train")
    monkeypatch.setitem(semi.IMAGENET_COUNTS, "1pct", 3)
    bad = tmp_path / "1percent.txt"
    bad.write_text("n01440764_1.JPEG\nn01440764_2.JPEG\n")
    with pytest.raises(semi.SplitFileError, match=r"2 lines, but SimCLR's ImageNet 1pct subset has 3"):
        semi.read_split_file(bad, "1pct", train)
    bad.write_text("n01440764_1.JPEG\nn01440764_2.JPEG\nn01440764_3.JPEG\n")
    with pytest.raises(semi.SplitFileError, match=r"3 listed images are not under .*n01440764_1.JPEG, n01440764_2.JPEG"):
        semi.read_split_file(bad, "1pct", train)
    with pytest.raises(FileNotFoundError, match="no such split file"):
        semi.read_split_file(tmp_path / "absent.txt", "1pct", train)
    rel = tmp_path / "rel.txt"
    rel.write_text("class0/im0.png\nclass9/im0.png\n")
    with pytest.raises(semi.SplitFileError, match=r"1 listed images are not under .*class9/im0.png"):
        semi.read_split_file(rel, "10pct", train)


def test_simclr_style_file_is_accepted_when_complete(tmp_path, monkeypatch):
    root = tmp_path / "in"
    for wnid in ("n01440764", "n01443537"):
        (root / "train" / wnid).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8)).save(root / "train" / wnid / f"{wnid}_{i}.JPEG", format="JPEG")
    from wssl_zoo.data import build_dataset

    train = build_dataset("imagefolder", root, "train")
    monkeypatch.setitem(semi.IMAGENET_COUNTS, "1pct", 2)
    f = tmp_path / "1percent.txt"
    f.write_text("n01440764_0.JPEG\nn01443537_2.JPEG\n")
    idx = semi.read_split_file(f, "1pct", train)
    assert [train.samples[i][1] for i in idx] == [0, 1]


def test_generated_split_is_class_balanced_and_deterministic(colour_data, tmp_path):
    from wssl_zoo.data import build_dataset

    train = build_dataset("imagefolder", colour_data, "train")
    a = semi.make_split_file(train, 25, 0, tmp_path / "a.txt")
    b = semi.make_split_file(train, 25, 0, tmp_path / "b.txt")
    assert a == b and (tmp_path / "a.txt").read_text() == (tmp_path / "b.txt").read_text()
    assert sorted(train.targets[i] for i in a) == [0, 0, 1, 1, 2, 2]
    assert semi.read_split_file(tmp_path / "a.txt", "10pct", train) == a


def test_missing_images_are_listed_first_20_and_counted(colour_data, tmp_path, monkeypatch):
    from wssl_zoo.data import build_dataset

    train = build_dataset("imagefolder", colour_data, "train")
    monkeypatch.setitem(semi.IMAGENET_COUNTS, "10pct", 25)
    f = tmp_path / "10percent.txt"
    f.write_text("".join(f"n01440764_{i}.JPEG\n" for i in range(25)))
    with pytest.raises(semi.SplitFileError) as err:
        semi.read_split_file(f, "10pct", train)
    msg = str(err.value)
    assert "25 listed images are not under" in msg and "n01440764_19.JPEG" in msg and "n01440764_20.JPEG" not in msg
    assert msg.endswith("...") and "\n" not in msg


def test_real_simclr_counts_are_the_defaults():
    assert semi.IMAGENET_COUNTS == {"1pct": 12811, "10pct": 128116}


def test_make_split_file_cli_percent_and_seed(colour_data, tmp_path, capsys):
    out = tmp_path / "half.txt"
    args = ["--model", "random:resnet18:imagenet:32", "--data", str(colour_data), "--split", "10pct",
            "--make-split-file", str(out), "--percent", "50", "--seed", "3", "--make-only"]
    assert semi.main(args) == 0
    assert "wrote 12 images (50 % per class, seed 3)" in capsys.readouterr().out
    from wssl_zoo.data import build_dataset

    train = build_dataset("imagefolder", colour_data, "train")
    assert semi.make_split_file(train, 50, 3, tmp_path / "again.txt") == semi.read_split_file(out, "10pct", train)
    assert out.read_text() == (tmp_path / "again.txt").read_text()
    assert semi.main([*args[:6], "--split-file", str(tmp_path / "absent.txt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("eval.semi: error:") and "absent.txt: no such split file" in err and "Traceback" not in err


@pytest.mark.parametrize("protocol", ["semi_intl", "semi_simclr"])
def test_semi_fine_tuning_runs_and_records(resnet18_dir, colour_data, tmp_path, protocol):
    out = tmp_path / "semi.json"
    assert semi.main([*eval_args(resnet18_dir, colour_data, out), "--split", "10pct", "--make-split-file",
                      str(tmp_path / "split.txt"), "--protocol", protocol, "--epochs", "1", "--batch-size", "4"]) == 0
    record = json.loads(out.read_text())
    validate_record(record)
    assert record["task"] == "semi_10pct" and record["labelled_images"] == 3
    assert record["split_sha256"] == sha256_file(tmp_path / "split.txt")


@pytest.mark.slow
@pytest.mark.gloo
def test_torchrun_semi_fine_tuning_writes_one_record(resnet18_dir, colour_data, tmp_path):
    """eval.semi under torchrun (2 gloo processes): DDP fine-tuning, the split file and the record
    are written once (by rank 0). The processes get torchrun's environment from tests/warm.py."""
    out = tmp_path / "semi.json"
    import warm

    run = warm.torchrun(2, ["-m", "eval.semi", *eval_args(resnet18_dir, colour_data, out), "--split", "10pct",
                            "--make-split-file", str(tmp_path / "split.txt"), "--percent", "50", "--epochs", "1",
                            "--batch-size", "4"],
                        cwd=REPO_ROOT, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1",
                                                    "WSSL_ZOO_CACHE": str(tmp_path / "c")})
    assert run.returncode == 0, run.stderr[-3000:]
    rec = json.loads(out.read_text())
    validate_record(rec)
    assert rec["labelled_images"] == 12 and rec["task"] == "semi_10pct"
    assert run.stdout.count("wrote 12 images") == 1 and run.stdout.count(f"-> {out}") == 2  # both ranks report


@pytest.mark.slow
@pytest.mark.gloo
def test_semi_under_two_processes_records_the_world_and_per_process_batch(test_resnet_dir, colour_data, tmp_path):
    """Fine-tuning as the authors ran it: DDP, BN statistics per process (no SyncBN), so the record says
    how it ran; the run resumes only at the same world size."""
    import warm

    out = tmp_path / "semi.json"
    script = tmp_path / "run.py"
    script.write_text(EVAL_MAIN_SCRIPT)
    args = [str(script), "semi", *eval_args(test_resnet_dir, colour_data, out, "--device", "cpu"), "--split", "10pct", "--make-split-file",
            str(tmp_path / "split.txt"), "--percent", "50", "--epochs", "2", "--batch-size", "4", "--keep-checkpoint"]
    run = warm.torchrun(2, args, cwd=REPO_ROOT, timeout=300,
                        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1",
                             "WSSL_ZOO_CACHE": str(tmp_path / "c")})
    assert run.returncode == 0, run.stderr[-3000:]
    rec = json.loads(out.read_text())
    validate_record(rec)
    assert (rec["world_size"], rec["per_process_batch"], rec["sync_batchnorm"]) == (2, 2, False)
    final = tmp_path / "semi.final.ckpt"
    final.rename(tmp_path / "semi.ckpt")  # as if the 2-process run had been stopped: one process may not resume it
    assert semi.main([*args[2:], "--resume"]) == 2
