"""Per-feeder Ray actors and the pure solver cores they call (topology, power flow, ...)."""
