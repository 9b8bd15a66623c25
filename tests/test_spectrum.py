"""The spectrum of the features (eval.spectrum): effective rank and eigenvalues, of the backbone and the
projector."""

from __future__ import annotations

import json

import pytest
import torch

from eval import spectrum
from eval.records import validate_record
from wssl_zoo import plots

from conftest import eval_args

pytestmark = pytest.mark.usefixtures("cache")  # a feature cache of its own for every test


def test_effective_rank_and_spectrum():
    torch.manual_seed(0)
    x = torch.randn(20000, 8) * torch.tensor([3.0, 2, 1, 1, 1, 1, 1, 0.5])
    ev = spectrum.spectrum(x)
    assert ev[0] == pytest.approx(9.0, rel=0.05) and ev[-1] == pytest.approx(0.25, rel=0.1)
    assert spectrum.effective_rank(torch.ones(16)) == pytest.approx(16.0)
    assert spectrum.effective_rank(torch.tensor([1.0, 0, 0])) == pytest.approx(1.0)


def test_spectrum_cli_covers_backbone_and_projector(resnet18_dir, colour_data, tmp_path):
    out = tmp_path / "sp.json"
    assert spectrum.main(eval_args(resnet18_dir, colour_data, out)) == 0
    record = json.loads(out.read_text())
    validate_record(record)
    assert set(record["eigenvalues"]) == {"backbone", "projector"} and len(record["eigenvalues"]["projector"]) == 16
    assert 1.0 <= record["metrics"]["backbone_effective_rank"] <= 512
    assert record["baseline"]["model"] == "random:resnet18:imagenet:32" and len(record["baseline"]["eigenvalues"]["backbone"]) == 512
    if plots.have_matplotlib():
        assert out.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
        assert set(plots.png_data(out.with_suffix(".png"))["series"]["backbone"]) == {
            record["model_label"], record["baseline"]["model_label"]}
