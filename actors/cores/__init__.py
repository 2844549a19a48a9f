"""Pure cores of the feeder: functions and small classes over typed inputs with frozen results.

Topology processing, power flow, FDIR planning, control rules (selections, tags, interlocks),
outage accounting (IEEE 1366 customer counts) and events. They import neither Ray nor the actor
host, nor open sockets or files, so the field simulator and the analyses use them directly; a unit
test (tests/unit/test_layers.py) fails if one of them reaches Ray or the host.
"""
