"""One run: plan, schedule, execute cells, reuse earlier verdicts."""
