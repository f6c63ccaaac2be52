"""The data sets a report judges sample quality on.  Torch-free: the command line's parser offers these as
`report --dataset` choices without importing the judge (a `ddpmrt sample` builds that parser too)."""

# Labelled offline data sets a judge can be trained on: name -> training-split size.
JUDGED_DATASETS = {"digits": 1400, "shapes": 4000}
NO_DATASET = "none"  # --dataset none: latency and the Gaussian check only
