"""Detection transfer of wssl-zoo backbones (``python -m detection.<tool>``).

- :mod:`detection.export`: timm ResNet -> detectron2 checkpoint (strict name map, input settings);
- :mod:`detection.configs`: the protocol YAMLs in ``detection/configs/``, loaded and validated;
- :mod:`detection.train`: ``main(argv) -> int``, training + COCOeval + a ``zoo/results`` record,
  with the torchvision backend (:mod:`detection.tv_backend`, model :mod:`detection.tv_model`) or
  detectron2 (:mod:`detection.d2_backend`);
- :mod:`detection.d2_register`: ``import detection.d2_register`` registers the project's detectron2
  components (for detectron2's own tools);
- :mod:`detection.fidelity`: what the torchvision backend computes against detectron2;
- :mod:`detection.data`: COCO-layout and VOC XML datasets with annotation checks, detectron2's
  input pipeline and sampler;
- :mod:`detection.evaluation`: COCOeval (bbox, segm).

See docs/detection.md.
"""

# name -> what it does: the one list, shown by `wssl-zoo --help` (`wssl-zoo detect <name>` is
# `python -m detection.<name>`)
COMMANDS = {
    "train": "train and evaluate Faster/Mask R-CNN on a backbone with a detectron2 protocol config (COCO, VOC)",
    "export": "a backbone as a detectron2 checkpoint (.pkl) with its input settings",
}
