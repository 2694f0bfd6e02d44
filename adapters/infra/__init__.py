"""Infrastructure: settings, object storage, the embedded S3 server, processes, PostgreSQL, the Delta tables."""
