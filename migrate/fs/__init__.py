"""Files and trees: the one tar codec, capturing trees as streams, safe extraction of hostile
ones, the bundle format, pre-copy bookkeeping, small file helpers."""
