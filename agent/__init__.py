"""fedge agent: the on-device daemon and the protocol core both sides speak (``agent.core``)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fedge")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+src"
