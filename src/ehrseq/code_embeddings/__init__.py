"""Code embeddings of patient-level code sequences: TemporalMed2Vec and its baselines.

- `sequences`: per-patient, time-ordered codes (stay events + discharge diagnoses) and
  the code vocabulary, fitted on the train split only.
- `pairs`: (target, contexts, dt, negatives) batches and the skip-gram task for
  `training.fit`.
- `word2vec`: the gensim skip-gram baseline on the same sequences and budget.
- `evaluation`: nearest neighbours; planted-problem, ICD-ontology and next-visit metrics.
- `transfer`: initialising a token model's embedding table from code vectors.
"""
