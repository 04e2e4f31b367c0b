"""dib-matrix reports: text, HTML, JSON and JUnit views of a run's results."""
