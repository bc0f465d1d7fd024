"""Data layer: manifests, torchgeo datasets, pedons, regions, chips, features, synthetic data."""
