"""Explaining clinical_lf: what it attends to, what drives its logit, and whether to trust it.

    attention.py      rollout and per-event pooling scores (the weights themselves are
                      captured on the real forward pass by ehrseq.models.attention)
    attributions.py   Captum IG / LayerIG / FeatureAblation on the logit, per-event scores
    faithfulness.py   deletion curves + AOPC, precision@k vs planted truth, head specialisation
    plots.py          timeline, head heatmap and importance bars (PNG + CSV)
    run.py            the whole analysis of one split, for the `explain` stage
"""
