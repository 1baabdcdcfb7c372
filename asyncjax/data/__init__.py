"""Data: long-tailed datasets by name, your own data, image tables and the batch order."""
