"""The vocabulary of the provenance tables (a leaf: the method modules and the package import it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The optimisers the recipes and protocols name (wssl_zoo.optim builds them).
OPTIMIZERS = ("adam", "sgd", "lars")
# Recipe fields that are documentation, not hyper-parameters.
RECIPE_META_FIELDS = ("name", "source", "description", "notes")
PROTOCOL_META_FIELDS = ("name", "version", "source", "kind")


@dataclass(frozen=True)
class Fact:
    """One hyper-parameter: the value and where it comes from."""

    value: Any
    source: str

    @property
    def authors(self) -> bool:
        """Whether the value is the authors' (not a wssl-zoo choice)."""
        return not self.source.startswith("wssl-zoo")


def src(repo: str, commit: str, where: str) -> str:
    """``owner/name@commit7 where``: the citation format of every table."""
    return f"{repo}@{commit[:7]} {where}"


OURS_MONITOR = "wssl-zoo: the pretraining monitor (cosine kNN on subsets), not an authors' setting"
UNUSED = "wssl-zoo: not used by this recipe's optimiser / schedule (dataclass default)"


def recipe_docs(repo: str, commit: str, rows: dict[str, tuple[str, ...]]) -> dict[str, dict[str, str]]:
    """``{recipe: (description, where[, notes])}`` -> the recipes' documentation fields, ``source``
    being ``https://github.com/<repo> @ <commit>: <where>``."""
    home = f"https://github.com/{repo} @ {commit}"
    return {name: dict(description=row[0], source=f"{home}: {row[1]}", notes=row[2] if len(row) > 2 else "")
            for name, row in rows.items()}
