"""Where a training runs: the seam between the harness and the machines that run its jobs.

The seam is `execution.jobs`: a job is plain data (`TrainingJob`), what comes back is a
`TrainingResult`, a submitted job is a `JobHandle`, and an `Executor` runs jobs on its `Slot`s.
Behind it: `local` (a subprocess of this machine, with `processes` to find and stop its process
tree, `output` for its bounded log and summary lines, `steal` for the hypervisor's share of the
clock, `sandbox` for bubblewrap) and `ray` (the same jobs on a Ray cluster). Nothing here imports
the rest of the tool but its error vocabulary (`autoresearch.errors`).
"""
