"""Embedded server speaking the Gradium S2S protocol, with the ``echo`` and ``offline`` engines.

``server = await serve(engine="echo")`` starts it on 127.0.0.1; point a session at
``server.url``. See :mod:`gradium_plugins.local.server` for the protocol details and
:class:`FaultPlan` for fault injection, :class:`ServerLimits` for the limits (timeouts,
connection cap, byte budgets) a long-running server needs.
"""

from .echo import ECHO_TEXT_RE, EchoEngine, dominant_frequency
from .engine import Engine, EngineSession, EngineSetup, EngineSetupError, Utterance
from .faults import FaultPlan
from .limits import ServerLimits
from .server import S2S_PATH, ConnectionRecord, LocalServer, serve

__all__ = [
    "ECHO_TEXT_RE",
    "S2S_PATH",
    "ConnectionRecord",
    "EchoEngine",
    "Engine",
    "EngineSession",
    "EngineSetup",
    "EngineSetupError",
    "FaultPlan",
    "LocalServer",
    "ServerLimits",
    "Utterance",
    "dominant_frequency",
    "serve",
]
