"""The lowest layer: the plan model, incident identity, the RTO clock and timeline, the one exception tree."""
