"""Model zoo, unit maps, local training, datasets, checkpoints: the only torch importers."""
