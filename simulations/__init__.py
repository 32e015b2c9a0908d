"""fedge simulations: thousands of clients running the real protocol code in one process (or Ray)."""
