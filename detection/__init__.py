"""Detection transfer of wssl-zoo backbones (``python -m detection.<tool>``)."""
