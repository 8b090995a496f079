"""ehrseq: MIMIC-style EHR tables to trained, evaluated and explained sequence models."""
