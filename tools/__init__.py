"""Tools around the stages: loss curves (plot), every stage in a row (train_all), the pages (pages)."""
