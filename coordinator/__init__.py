"""fedge coordinator: enrollment, training rounds, secure aggregation, privacy accounting, releases."""

if __name__ != "fedge.coordinator":  # one module, one name: the repository folder is never a top-level package
    raise ImportError(f"import fedge.coordinator, not {__name__}: fedge installs one top-level name, fedge")
