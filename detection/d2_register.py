"""The project's detectron2 components, registered on import: one line makes detectron2's own tools
run the protocol configs of ``detection/configs/``.

    import detection.d2_register  # noqa: F401  (registers Res5ROIHeadsExtraNorm)

Put that line at the top of detectron2's ``tools/train_net.py`` (or any script that builds a model
from these configs), then run it as detectron2 documents::

    python tools/train_net.py --config-file detection/configs/coco_R_50_C4_2x.yaml --num-gpus 8 \\
        MODEL.WEIGHTS backbone_d2.pkl  # + the input settings of the export: see docs/detection.md

What it registers, in detectron2's registries:

- ``ROI_HEADS_REGISTRY["Res5ROIHeadsExtraNorm"]``: ``Res5ROIHeads`` with a norm layer of
  ``MODEL.RESNETS.NORM`` after the res5 block, the head of MoCo's detection configs
  (facebookresearch/moco@90e244a detection/train_net.py:14-25), which the C4 protocols name.

Importing it needs detectron2 and nothing else of wssl-zoo; importing it again is harmless.
"""

from __future__ import annotations

from detectron2.layers import get_norm
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, Res5ROIHeads

__all__ = ["Res5ROIHeadsExtraNorm", "REGISTERED"]


class Res5ROIHeadsExtraNorm(Res5ROIHeads):
    """``Res5ROIHeads`` with a ``MODEL.RESNETS.NORM`` norm appended to the res5 block (MoCo, He et al. 2020)."""

    def _build_res5_block(self, cfg):
        seq, out_channels = super()._build_res5_block(cfg)
        seq.add_module("norm", get_norm(cfg.MODEL.RESNETS.NORM, out_channels))
        return seq, out_channels


# A second import of this file under another name (a copy of the module) must not register twice:
# detectron2's Registry refuses a name that is taken.
if "Res5ROIHeadsExtraNorm" not in ROI_HEADS_REGISTRY:
    ROI_HEADS_REGISTRY.register(Res5ROIHeadsExtraNorm)

REGISTERED = {"ROI_HEADS_REGISTRY": ("Res5ROIHeadsExtraNorm",)}
