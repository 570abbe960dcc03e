"""The scheduler process (`halaxy-bridge scheduler`): one leader at a time runs the periodic
work: Dramatiq maintenance (requeue a dead worker's messages) and reconcile sweeps."""
