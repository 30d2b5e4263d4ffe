"""Entry points for ``ray job submit``: train (and, as they land, evaluate, predict ...).

Importing this package before Ray keeps a Ray that it starts on this machine on 127.0.0.1:
Ray reads ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` once, when it is imported. Under
``ray job submit`` (``RAY_ADDRESS`` set) nothing is changed: the cluster decides.
"""

import os

if not os.environ.get("RAY_ADDRESS"):
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
