"""Step logic as pure functions over plain data: no Prefect, no S3, no weights."""
