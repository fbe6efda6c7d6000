"""CRIU on a host: probing and capabilities, log tails, lazy pages, post-copy processes, where
checkpoint images are staged, reading images."""
