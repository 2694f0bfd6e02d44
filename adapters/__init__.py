"""All I/O and heavy machinery: settings, S3, the embedded S3 server, models, the engine."""
