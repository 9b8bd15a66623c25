"""``python -m eval``: lists the evaluation commands (each is ``python -m eval.<name> --help``)."""

from __future__ import annotations

import sys

COMMANDS = {
    "linear": "linear classifier on a frozen backbone (the model's paper protocol: small, intl, intl_plain, cwrgp; "
              "fast: wssl-zoo's quick probe)",
    "knn": "k-NN on cached features (knn5: the papers' 5-NN majority vote; knn200: weighted cosine)",
    "semi": "fine-tuning on a 1 % / 10 % labelled subset (semi_intl, semi_simclr); split files",
    "spectrum": "covariance eigenvalues and effective rank of backbone and projector features",
    "benchmark": "every model under the same protocols, resumable, one table",
    "report": "LEADERBOARD.md, docs/leaderboard.png, the README section and MODEL_CARDS/ from zoo/results",
}


def main() -> int:
    print("usage: python -m eval.<command> --help\n")
    for name, what in COMMANDS.items():
        print(f"  {name:10s} {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
