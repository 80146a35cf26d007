"""A run's lifecycle: the session that starts or resumes it and wires its pieces, its state, the journal
that records it, the briefing the agent reads, its limits, and the scheduler over what is in flight.

docs/architecture.md draws the map.
"""
