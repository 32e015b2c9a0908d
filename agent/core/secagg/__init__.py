"""SecAgg+ (Bell et al., CCS 2020, on Bonawitz et al., CCS 2017): the coordinator learns only the sum.

Pure state machines, no I/O: :class:`~fedge.agent.core.secagg.client.SecAggClient` and
:class:`~fedge.agent.core.secagg.server.SecAggServer` consume wire messages
(:mod:`fedge.agent.core.messages.secagg`) and return the messages to send. Stages are named once in
:mod:`.stages`; parameters are derived and validated in :mod:`.params`; the neighbour graph is
in :mod:`.graph`; fixed-point quantization in :mod:`.quantize`.
"""
