"""Image decoding, data layouts and splits, the image cache, batch transforms (no model, no torch.nn)."""
