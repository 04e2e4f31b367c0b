"""dib-matrix orchestrator: run dib across a host x target matrix of containers."""
