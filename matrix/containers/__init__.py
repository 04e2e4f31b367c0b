"""The container engine: cells in containers, Swarm jobs, leases that keep shared objects alive."""
