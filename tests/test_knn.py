"""k-NN evaluation: the three rules (the authors' tie-breaking included), the chunked rules on the
evaluation device giving exactly the CPU rules' predictions, a bank read from feature shards, the CLI."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from eval import knn
from eval.protocols import get_protocol, with_overrides
from eval.records import validate_record
from wssl_zoo.evaluation import k_smallest, knn_predict

from builders import feature_shards
from conftest import eval_args

pytestmark = pytest.mark.usefixtures("cache")  # a feature cache of its own for every test


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


def test_knn_rules():
    xtr = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [5.0, 5.0], [5.1, 5.0]])
    ytr = torch.tensor([0, 0, 0, 1, 1])
    xq = torch.tensor([[0.05, 0.05], [4.9, 5.1]])
    assert knn.knn_predict(get_protocol("knn5"), xtr, ytr, xq).tolist() == [0, 0]  # 5-NN majority: 3 vs 2
    p3, _ = with_overrides(get_protocol("knn5"), k=3)
    assert knn.knn_predict(p3, xtr, ytr, xq).tolist() == [0, 1]
    # weighted cosine: direction matters, not distance
    xtr = torch.tensor([[1.0, 0.0], [10.0, 0.1], [0.0, 1.0]])
    pred = knn.knn_predict(with_overrides(get_protocol("knn200"), k=2)[0], xtr, torch.tensor([0, 0, 1]),
                           torch.tensor([[0.1, 1.0]]))
    assert pred.tolist() == [1]


def test_knn5_ties_go_to_the_smallest_class_as_in_the_authors_code():
    # 5 neighbours: classes 2, 2, 1, 1, 0 (nearest first): a 2-2 tie between 1 and 2 -> class 1
    xtr = torch.tensor([[0.1], [0.2], [0.3], [0.4], [0.5], [9.0]])
    ytr = torch.tensor([2, 2, 1, 1, 0, 0])
    assert knn.knn_predict(get_protocol("knn5"), xtr, ytr, torch.tensor([[0.0]])).tolist() == [1]
    assert get_protocol("knn5").version == 2


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
    store = feature_shards(tmp_path / "bank", xtr, ytr, world=3)
    assert len(store.index["shards"]) == 3
    for rule in ("majority-euclidean", "weighted-cosine"):
        assert torch.equal(knn_predict(store, store.labels, xq, 5, rule, bank_chunk=64), reference_knn(xtr, ytr, xq, 5, rule))


def test_monitor_knn_is_not_called_5nn():
    import inspect

    from wssl_zoo import demo, evaluation
    from wssl_zoo.pretrain import evaluate, loop

    for module in (demo, evaluate, loop, evaluation):
        text = inspect.getsource(module)
        assert "knn5_top1" not in text and '"knn_top1"' not in text
    assert "monitor_knn5_cos" in inspect.getsource(evaluation)


def test_knn_cli_records_both_rules(resnet18_dir, colour_data, tmp_path, capsys):
    assert knn.main(eval_args(resnet18_dir, colour_data, tmp_path / "k")) == 0
    records = [json.loads(p.read_text()) for p in (tmp_path / "k").glob("*.json")]
    assert sorted(r["protocol"]["name"] for r in records) == ["knn200", "knn5"]
    for r in records:
        validate_record(r)
    # one rule into one named file: exactly that file
    assert knn.main([*eval_args(resnet18_dir, colour_data, tmp_path / "k5.json"), "--protocols", "knn5"]) == 0
    assert json.loads((tmp_path / "k5.json").read_text())["protocol"]["name"] == "knn5"
    assert knn.main(eval_args(resnet18_dir, colour_data, tmp_path / "both.json")) == 2  # two rules, one file: refused
    assert "--out" in capsys.readouterr().err and not (tmp_path / "both.json").exists()
