"""The evaluation commands (``python -m eval.<name>``, or ``wssl-zoo eval <name>``): thin faces over
:mod:`wssl_zoo.evaluation`, the protocols and the records."""

# name -> what it does: the one list, shown by `python -m eval` and `wssl-zoo --help`
COMMANDS = {
    "linear": "linear classifier on a frozen backbone (the model's paper protocol: small, intl, intl_plain, cwrgp; "
              "fast: wssl-zoo's quick probe)",
    "knn": "k-NN on cached features (knn5: the papers' 5-NN majority vote; knn200: weighted cosine)",
    "semi": "fine-tuning on a 1 % / 10 % labelled subset (semi_intl, semi_simclr); split files",
    "spectrum": "covariance eigenvalues and effective rank of backbone and projector features",
    "benchmark": "every model under the same protocols, resumable, one table",
    "report": "every generated document from zoo/results (the same as wssl-zoo docs)",
}
