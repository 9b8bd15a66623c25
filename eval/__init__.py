"""Transfer-evaluation suite of wssl-zoo (``python -m eval.<task>``)."""
