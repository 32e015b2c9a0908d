"""fedge simulations: thousands of clients running the real protocol code in one process (or Ray)."""

if __name__ != "fedge.simulations":  # one module, one name: the repository folder is never a top-level package
    raise ImportError(f"import fedge.simulations, not {__name__}: fedge installs one top-level name, fedge")
