"""The source side: the migration state machine and the commands that drive it from the host a
container leaves (run, check, recover, evacuate, drill, export)."""
