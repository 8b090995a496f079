"""Source readers: MIMIC-IV, MIMIC-III and the synthetic generator."""
