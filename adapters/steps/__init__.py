"""A run's step work: conditioning, rendering, scoring, claims, publishing, outcomes, finishing, delivery."""
