"""Docker: the Engine protocol mapped onto docker-py, runc called directly, runc.conf,
containerd leftovers, /proc scans. Nothing outside engines/ imports it."""
