"""fedge agent: the on-device daemon and the protocol core both sides speak (``agent.core``)."""


def __getattr__(name: str) -> str:
    # The version is looked up on first use: importlib.metadata costs the daemon ~2.8 MB of RSS.
    if name != "__version__":
        raise AttributeError(name)
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fedge")
    except PackageNotFoundError:  # running from a source tree without install
        return "0.0.0+src"
