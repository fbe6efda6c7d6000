"""What every layer shares: errors with stable codes, the report, journals, locks, the fault
seam, /proc/self/mountinfo."""
