"""The operations room: object storage (S3), MLflow registry, the CI trigger, run reports."""
