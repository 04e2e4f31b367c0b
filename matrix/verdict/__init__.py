"""The verdict stage: what a finished cell comes to.

A build that exited 0 is ``success`` only once its images pass their checks
(:mod:`.verify`). A failed or skipped cell gets its cause from one place
(:mod:`.classify`), which reads the cell's evidence lines, its log at bounded cost
(:mod:`.logscan`), dib's failure record or an upstream diskimage-builder run's
hook trail (:mod:`.runparts`), and names the cause from the YAML catalogue alone
(:mod:`.catalogue`).
"""
