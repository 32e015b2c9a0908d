"""fedge agent: the on-device daemon and the protocol core both sides speak (``fedge.agent.core``)."""

if __name__ != "fedge.agent":  # one module, one name: the repository folder is never a top-level package
    raise ImportError(f"import fedge.agent, not {__name__}: fedge installs one top-level name, fedge")


def __getattr__(name: str) -> str:
    # The version is looked up on first use: importlib.metadata costs the daemon ~2.8 MB of RSS.
    if name != "__version__":
        raise AttributeError(name)
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fedge")
    except PackageNotFoundError:  # running from a source tree without install
        return "0.0.0+src"
