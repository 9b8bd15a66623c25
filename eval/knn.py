"""``python -m eval.knn``: k-NN classification on the cached features.

Two rules, both recorded: ``knn5`` (the W-MSE / CW-RGP papers' 5-NN, Euclidean distance,
majority vote; ``eval/knn.py`` of the W-MSE code) and ``knn200`` (the weighted cosine k-NN in
common use: k=200, votes weighted by exp(cosine / T), T=0.07).

    python -m eval.knn --model runs/intl_c10 --dataset cifar10 --data DATA
    torchrun --nproc_per_node 8 -m eval.knn --model intl_r50 --data /imagenet

The neighbours are found on ``--device`` (the GPU by default, as the authors' ``get_acc`` runs its
k-NN on CUDA), chunked over the queries and over the bank
(:func:`wssl_zoo.evaluation.knn_predict`); under torchrun each process takes a block of the
queries against the whole memory-mapped bank and the hit counts are summed.
"""

from __future__ import annotations

import argparse
import time

import torch

from wssl_zoo import cliargs
from wssl_zoo.distributed import is_main, rank_world
from wssl_zoo.evaluation import knn_predict as predict
from wssl_zoo.evaluation import rank_rows
from wssl_zoo.weights import resolve

from ._cli import add_common, check_out, record_path, run_main
from .features import feature_store, mark_overrides
from .protocols import KNNProtocol, get_protocol, with_overrides
from .records import make_record, write_record
from .training import all_ranks_sum


def knn_predict(protocol: KNNProtocol, xtr, ytr, xq, chunk: int = 1024, device=None) -> torch.Tensor:
    """Predicted classes of ``xq`` under ``protocol`` (:func:`wssl_zoo.evaluation.knn_predict`)."""
    return predict(xtr, ytr, xq, protocol.k, protocol.rule, protocol.temperature, chunk, device=device)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval.knn", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(p)
    p.add_argument("--protocol", dest="protocols", default="knn5,knn200",
                   help="k-NN protocol(s), comma-separated (default: %(default)s)")
    cliargs.add_alias(p, "--protocols", "protocols")
    p.add_argument("-k", "--k", dest="k", type=int, help="override k of every rule (recorded as an override; "
                   "default: each protocol's, 5 and 200)")
    p.add_argument("--temperature", type=float, help="override the weighted rule's temperature (recorded; default: 0.07)")
    return p


def run(args, command: str) -> int:
    check_out(args, len([n for n in args.protocols.split(",") if n.strip()]) * args.seeds)
    device = cliargs.device(args.device)
    world = rank_world()[1]
    batch = args.batch_size or 256
    for seed in range(args.seed, args.seed + args.seeds):  # k-NN is deterministic; seeds only matter for random-init baselines
        weights = resolve(args.model, seed, verify=not args.allow_unverified)
        model = weights.build()
        start = time.perf_counter()
        opts = dict(batch_size=batch, workers=args.workers, progress=not args.no_progress,
                    normalisation=args.normalisation, amp=args.amp)
        bank, meta = feature_store(weights, model, args.dataset, args.data, "train", device, args.cache_dir, **opts)
        test, meta_te = feature_store(weights, model, args.dataset, args.data, "test", device, args.cache_dir, **opts)
        mine = rank_rows(len(test))  # this process's queries
        queries = test.range(mine.start, mine.stop)
        for name in args.protocols.split(","):
            protocol, proto_record = with_overrides(get_protocol(name.strip(), "knn"), k=args.k,
                                                    temperature=args.temperature if name.strip() != "knn5" else None)
            proto_record = mark_overrides(proto_record, args.normalisation, args.amp)
            pred = knn_predict(protocol, bank, bank.labels, queries, device=device)
            hits = torch.tensor([int((pred == test.labels[mine.start:mine.stop]).sum())])
            metrics = {"top1": 100.0 * int(all_ranks_sum(hits, device)[0]) / len(test)}
            record = make_record(task="knn", model=weights.spec, weights_sha256=weights.weights_sha256,
                                 protocol=proto_record, dataset=dict(name=args.dataset, root=str(args.data),
                                                                     fingerprint=meta["fingerprint"]),
                                 seed=seed, metrics=metrics, wall_seconds=time.perf_counter() - start,
                                 command=command, extra=dict(model_label=weights.label, arch=weights.arch, stem=weights.stem,
                                                             cache_hit=meta["cache_hit"] and meta_te["cache_hit"],
                                                             train_samples=len(bank), test_samples=len(test),
                                                             world_size=world, per_process_batch=batch))
            path = write_record(record, record_path(args, "knn", weights.label, proto_record["name"], seed, record))
            if is_main():
                print(f"knn {proto_record['name']} seed {seed}: top1 {metrics['top1']:.2f} -> {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main("eval.knn", build_parser, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
