"""The data checks of a loaded partition: name -> what it asserts (the check specs'
descriptions). A module of its own so that the health report (``secure-etl status``)
knows them without loading pyarrow."""

LOADED_CHECKS = {
    "rows_reconcile": "raw rows = loaded + quarantined + filtered rows for the partition",
    "null_rate": "no column of the loaded partition exceeds the configured null rate",
    "unique_keys": "the key column has no duplicates in the loaded partition",
    "no_pii_leak": "no raw PII value appears in the hashed or loaded partition",
    "no_undeclared_pii": "no undeclared, untransformed column holds values that look like "
    "personal data (e-mail, phone, card with valid Luhn, IBAN with valid mod-97)",
    "audit_chain": "the audit log's hash chain and signed checkpoints verify",
}
