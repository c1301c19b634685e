"""The report stage and what it writes: the paper's tables and figures from the evaluate stage's rows.

- `tables`: scores per dataset x method x metric and the min-max normalised average (Tables 5-7),
  rewrite token lengths (Tables 1-2), head to head (Figure 4), Proposition 2's drift, drift in
  meaning, the alpha chosen on validation;
- `significance`: paired tests over the test prompts (bootstrap interval, sign test);
- `plots`: CLIP vs preference scatter (Figure 3), the alpha sweep (Figure 5), training curves, samples;
- `document`: the typed `Report` that report.json holds and every reader reads by attribute;
- `markdown`: report.md; `stage`: the stage's computation; `backbones`: several backbones side by side.
"""
