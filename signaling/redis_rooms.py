"""A room's records in Redis: its keys, and the Lua scripts that change them atomically.

One hash (peer -> ``node|seq|token``) and one sorted set (join order) per room, and a join
counter; a script checks and changes them in one step (ID unique, room size, resume) and
publishes the change on the room's channel itself, so every node sees membership changes
in the order they happened. Used by the registry (joins, leaves, restores) and by the
liveness sweep (the leaves of a dead node's members).
"""

from __future__ import annotations

import hashlib

from signaling.cluster import room_channel
from signaling.protocol import PeerId, RoomId

#: Seconds an empty room's join counter is kept: a membership is known by its sequence
#: number, and events of the old ones may still be on their way (a "left" published on the
#: room's channel, a leave sent again after a short Redis outage): they must not meet a new
#: membership with the same number. A leave later than this still never ends a newer
#: membership (it must match its token too); meanwhile an abandoned room costs one key.
EMPTY_ROOM_TTL = 600

JOIN = """
local rec = redis.call('HGET', KEYS[1], ARGV[1])
local replaced = ''
if rec then
  local node, seq, token = string.match(rec, '^([^|]*)|([^|]*)|(.*)$')
  if ARGV[4] == '' then return {'taken', node} end
  if token ~= ARGV[4] then return {'bad-token'} end
  redis.call('ZREM', KEYS[2], ARGV[1])
  local gone = {'l', ARGV[7], ARGV[8], ARGV[1], '', seq, 'r', ''}
  redis.call('PUBLISH', ARGV[6], table.concat(gone, '\\31'))
  replaced = rec
elseif redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[5]) then
  return {'full'}
end
local seq = redis.call('INCR', KEYS[3])
redis.call('PERSIST', KEYS[3])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. '|' .. seq .. '|' .. ARGV[3])
redis.call('ZADD', KEYS[2], seq, ARGV[1])
local came = {'j', ARGV[7], ARGV[8], ARGV[1], ARGV[2], seq, '', ''}
redis.call('PUBLISH', ARGV[6], table.concat(came, '\\31'))
local out = {'ok', tostring(seq), replaced}
for _, peer in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  if peer ~= ARGV[1] then
    table.insert(out, peer)
    table.insert(out, redis.call('HGET', KEYS[1], peer))
  end
end
return out
"""

LEAVE = """
local rec = redis.call('HGET', KEYS[1], ARGV[1])
if not rec then return -1 end
if string.match(rec, '^[^|]*|(.*)$') ~= ARGV[2] then return -1 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('PUBLISH', ARGV[3], ARGV[4])
local left = redis.call('HLEN', KEYS[1])
if left == 0 then redis.call('EXPIRE', KEYS[3], ARGV[5]) end
return left
"""


RESTORE = """
local rec = redis.call('HGET', KEYS[1], ARGV[1])
if rec then
  local seq = string.match(rec, '^[^|]*|([^|]*)|')
  if seq == ARGV[3] then return 'kept' end
  return 'superseded'
end
if tonumber(redis.call('GET', KEYS[3]) or '0') < tonumber(ARGV[3]) then
  redis.call('SET', KEYS[3], ARGV[3])
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. '|' .. ARGV[3] .. '|' .. ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
local came = {'j', ARGV[2], ARGV[6], ARGV[1], ARGV[2], ARGV[3], '', ''}
redis.call('PUBLISH', ARGV[5], table.concat(came, '\\31'))
return 'restored'
"""


def room_keys(room: RoomId) -> list[str]:
    """The room's hash, order and counter. One hash tag, so one slot in Redis Cluster: a
    hash of the name, which may hold braces of its own (``}`` would end a tag early); the
    name follows it, so two rooms never share keys, whatever their hashes."""
    digest = hashlib.blake2s(room.encode(), digest_size=4).hexdigest()
    prefix = f"mp:{{{digest}}}:{room}"
    return [f"{prefix}:m", f"{prefix}:o", f"{prefix}:s"]


def leave_args(room: RoomId, peer: PeerId, seq: int, token: str, left: str) -> list[str | int]:
    """The leave of membership ``seq`` (with ``token``) of ``peer``: it ends that one only."""
    return [peer, f"{seq}|{token}", room_channel(room), left, EMPTY_ROOM_TTL, room]


def as_text(value: bytes | str) -> str:
    """A reply of a client made with or without ``decode_responses``."""
    return value.decode() if isinstance(value, bytes) else value


def parse_record(text: str) -> tuple[str, int]:
    """A membership record's node and sequence number."""
    node, seq, _ = text.split("|", 2)
    return node, int(seq)
