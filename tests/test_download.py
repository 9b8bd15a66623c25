"""--download: torchvision's real download path against a local HTTP server serving the real Fashion-MNIST
files (Debian's dataset-fashion-mnist package), and what it does around it (where, who, what is refused)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import shutil
import threading
from pathlib import Path

import pytest

from wssl_zoo import catalogue
from wssl_zoo import download as dl
from wssl_zoo.cli import main
from wssl_zoo.data import build_dataset

DEBIAN = Path(catalogue.get("fashion_mnist").default_root)
FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
         "t10k-labels-idx1-ubyte.gz")
needs_debian = pytest.mark.skipif(not all((DEBIAN / f).is_file() for f in FILES),
                                  reason="Debian's dataset-fashion-mnist is not installed (apt-get install "
                                         "dataset-fashion-mnist)")


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A local HTTP server over a folder (the test copies files into it); WSSL_ZOO_DATA_MIRROR points at it.
    Yields (folder, requested paths)."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    requested: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            requested.append(self.path)
            super().do_GET()

        def log_message(self, *args):  # quiet
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv(dl.MIRROR_ENV, f"http://127.0.0.1:{server.server_address[1]}/")
    yield folder, requested
    server.shutdown()
    server.server_close()


def _serve_debian_files(folder: Path, monkeypatch) -> None:
    """Copy Debian's files to the mirror and give torchvision their md5s: Debian recompressed the gzip files,
    so the compressed bytes (and md5s) differ from the original release while the images and labels are the
    same; every other step (URLs, download, md5 check, extraction, our reader) is torchvision's own."""
    import torchvision

    for name in FILES:
        shutil.copy(DEBIAN / name, folder / name)
    md5 = {name: hashlib.md5((folder / name).read_bytes()).hexdigest() for name in FILES}
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "resources", [(n, md5[n]) for n in FILES])


@needs_debian
def test_download_fetches_fashion_mnist_through_torchvision_from_the_mirror(mirror, tmp_path, monkeypatch, capsys):
    folder, requested = mirror
    _serve_debian_files(folder, monkeypatch)
    root = tmp_path / "data"
    assert main(["download-data", "fashion_mnist", "--root", str(root)]) == 0
    got = root / "FashionMNIST" / "raw"
    assert f"--data {got} --dataset fashion_mnist" in capsys.readouterr().out
    # every file came from the mirror (torchvision asks twice per file: once to follow redirects, once to fetch)
    assert sorted(set(requested)) == sorted(f"/{n}" for n in FILES)
    before = len(requested)
    train, test = build_dataset("fashion_mnist", got, "train"), build_dataset("fashion_mnist", got, "test")
    reference = build_dataset("fashion_mnist", DEBIAN, "test")
    assert (len(train), len(test)) == (60000, 10000) and test.targets == reference.targets
    assert (test[7][0].tobytes(), test[7][1]) == (reference[7][0].tobytes(), reference[7][1])
    # a second call finds the files and downloads nothing; resolve_data finds an earlier download in --data
    assert dl.download("fashion_mnist", root) == got and len(requested) == before
    assert dl.resolve_data("fashion_mnist", str(root), allow_download=False) == str(got)


@needs_debian
def test_a_tampered_download_is_refused_naming_the_mirror(mirror, tmp_path, monkeypatch):
    folder, _ = mirror
    _serve_debian_files(folder, monkeypatch)
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not the labels")
    with pytest.raises(RuntimeError, match=r"--download fashion_mnist: could not fetch it from http://127\.0\.0\.1:\d+/"):
        dl.download("fashion_mnist", tmp_path / "data")


def test_the_default_folder_and_what_cannot_be_downloaded(tmp_path, monkeypatch):
    monkeypatch.setenv("WSSL_ZOO_DATA", str(tmp_path / "cache"))
    assert dl.default_root("cifar10") == tmp_path / "cache" / "cifar10"
    assert set(dl.downloadable()) == {"cifar10", "cifar100", "stl10", "fashion_mnist"}
    with pytest.raises(ValueError, match="imagenet cannot be downloaded .* the datasets wssl-zoo downloads are cifar10"):
        dl.download("imagenet", tmp_path)
    # data that is there is used as it is; absent data without --download is left to the reader's own error
    (tmp_path / "folder" / "train" / "a").mkdir(parents=True)
    assert dl.resolve_data("cifar10", str(tmp_path / "folder"), allow_download=True) == str(tmp_path / "folder")
    assert dl.resolve_data("cifar10", str(tmp_path / "none"), allow_download=False) == str(tmp_path / "none")


def test_the_mirror_replaces_the_host_of_every_torchvision_downloader(monkeypatch):
    monkeypatch.setenv(dl.MIRROR_ENV, "http://mirror.example/data")
    assert dl._torchvision_class(catalogue.get("cifar10")).url == "http://mirror.example/data/cifar-10-python.tar.gz"
    assert dl._torchvision_class(catalogue.get("stl10")).url == "http://mirror.example/data/stl10_binary.tar.gz"
    assert dl._torchvision_class(catalogue.get("fashion_mnist")).mirrors == ["http://mirror.example/data/"]


@needs_debian
def test_the_eval_tools_take_download_and_read_what_it_fetched(mirror, tmp_path, monkeypatch, capsys):
    """`--download` on an eval tool: without --data the dataset goes to $WSSL_ZOO_DATA/NAME and the tool reads it."""
    from eval import _cli, knn

    folder, _ = mirror
    _serve_debian_files(folder, monkeypatch)
    monkeypatch.setenv("WSSL_ZOO_DATA", str(tmp_path / "cache"))
    seen = []

    def run(args, command):
        seen.append(args.data)
        return 0

    argv = ["--model", "random:resnet18", "--dataset", "fashion_mnist", "--no-progress"]
    assert _cli.run_main("eval.knn", knn.build_parser, run, [*argv, "--data", str(tmp_path / "none")]) == 0
    assert seen == [str(tmp_path / "none")]  # not there and no --download: left to the reader's own error
    assert _cli.run_main("eval.knn", knn.build_parser, run, [*argv, "--data", str(tmp_path / "d"), "--download"]) == 0
    assert seen[-1] == str(tmp_path / "d" / "FashionMNIST" / "raw")
    assert len(build_dataset("fashion_mnist", seen[-1], "test")) == 10000


def test_an_eval_tool_without_data_says_data_or_download(capsys):
    from eval import knn

    assert knn.main(["--model", "random:resnet18", "--dataset", "imagefolder"]) == 2
    err = capsys.readouterr().err
    assert "--data is required" in err and "--download" in err and len(err.strip().splitlines()) == 1
