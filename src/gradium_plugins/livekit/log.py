"""Logger of the LiveKit adapters.

Messages are static: transcripts, identities and audio never appear in the message text (see
``extra={"lk.pii.*": ...}`` where a value is worth attaching), and API keys never appear at all.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("gradium_plugins.livekit")
