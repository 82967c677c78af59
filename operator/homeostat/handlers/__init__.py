"""kopf wiring: load state, call the core, execute its actions through the ports, patch status.

Importing this package registers every handler with kopf's default registry. One feature per
module; they share only ``runtime`` (the typed per-process runtime) and ``approval_flow``.
"""

from homeostat.handlers import approvals as approvals
from homeostat.handlers import autoscaling as autoscaling
from homeostat.handlers import healing as healing
from homeostat.handlers import interactions as interactions
from homeostat.handlers import lifecycle as lifecycle
from homeostat.handlers import maintenance as maintenance
from homeostat.handlers import periodic as periodic
from homeostat.handlers import replicatedservice as replicatedservice
