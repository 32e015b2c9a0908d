"""fedge coordinator: enrollment, training rounds, secure aggregation, privacy accounting, releases."""
