"""The record schema, writer and reader live in :mod:`wssl_zoo.records` (pretraining writes
records too, and ``wssl_zoo`` never imports ``eval``); this module re-exports them."""

from wssl_zoo.records import (  # noqa: F401
    PRETRAIN_EVAL_TASK,
    RECORD_SCHEMA_VERSION,
    REQUIRED,
    RESULTS_DIR,
    SCHEMA_VERSION,
    aggregate,
    dataset_fingerprint,
    default_record_path,
    hardware,
    is_full_evaluation,
    is_own_protocol,
    make_record,
    read_records,
    record_file,
    record_identity,
    validate_record,
    write_record,
)
