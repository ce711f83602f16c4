"""The demo dataset's columns: a leaf module, so config validation and the demo source
share them without config importing the ETL code."""

SCHEMA = {
    "customer_id": "Int64",
    "full_name": "string",
    "email": "string",
    "phone": "string",
    "country": "string",
    "signup_at": "datetime64[us, UTC]",
    "amount_eur": "float64",
}
PII_COLUMNS = ("full_name", "email", "phone")
# What each column holds, as config validation checks filters against it.
KINDS = {
    "customer_id": "integer",
    "full_name": "string",
    "email": "string",
    "phone": "string",
    "country": "string",
    "signup_at": "timestamp",
    "amount_eur": "number",
}
