"""Every wire message type, one module per protocol area; importing this registers them all.

Add a module here (and import it below) for a new area; :mod:`fedge.agent.core.wire` loads this
package before its first encode or decode, so the registry is always complete.
"""

from fedge.agent.core.messages import (
    common,  # noqa: F401
    device,  # noqa: F401
    fleet,  # noqa: F401
    rounds,  # noqa: F401
    secagg,  # noqa: F401
    transport,  # noqa: F401
)
