"""Greenlets that a client's greenlet starts: storage calls, node requests, timers.

gevent records, for debugging, the newest ten frames of whoever spawns a
greenlet. Reading them makes CPython 3.11 create a frame object for each,
and such an object stays allocated until its frame returns. Spawned from a
client's greenlet, most of those frames are its reading loop's, which
return only when the client leaves: ~1.4 KiB held for every client that
ever made a storage call. These greenlets record no spawning stack.
"""

from __future__ import annotations

import gevent


class SideGreenlet(gevent.Greenlet):
    spawning_stack_limit = 0


spawn = SideGreenlet.spawn
spawn_later = SideGreenlet.spawn_later
