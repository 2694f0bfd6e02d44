"""All I/O and heavy machinery, in four rooms:

- `infra/`: settings, object storage, the embedded S3 server, processes, PostgreSQL, the Delta tables;
- `model/`: weights and kits, the diffusion and simulated engines, CLIP, upscalers;
- `catalog/`: reading and importing catalogs, their snapshots and images, campaign specs;
- `steps/`: a run's step work: conditioning, rendering, scoring, claims, publishing, outcomes,
  finishing, delivery, style scans, table operations.

steps > model | catalog > infra: a room imports only the rooms below it (pyproject's import contracts).
"""
