"""The script of a commit on redis: the rules of :func:`flask_river_ml.storage.local.commit_in`
in Lua, run atomically on the server in one round trip, and how a change is packed into its
KEYS and ARGV and its reply read back.
"""

from __future__ import annotations

from typing import Any

import redis

from .base import EXISTS, TAKEN, Change, Guard, Outcome, Records
from .local import UNDOABLE
from .redis_client import RedisClient

# The rules of storage.local.commit_in, in Lua. KEYS: with a guard, the log's stream, its
# head and the guarded key; then the key to take, the key to create (when there are), the
# keys of the many to take and to create (a batch's), the keys to set, the timings observed,
# the timings taken back. ARGV: [1] '1' with a guard, [2] the head the writer saw ('' when
# not checked), [3] the value it saw, [4] '1' with a record, [5] the record, [6] '1' with a
# take, [7] the value to take, [8] '1' with a create, [9] its value, [10] its time to live in
# milliseconds (0: none), [11] the number of sets, [12] and [13] the numbers of the many to
# take and to create, [14] the number of timings observed, [15] the last record the writer
# has seen ('' when it does not say); then per take its value, per create its value and time
# to live, per set its value and time to live, per timing observed the duration of each call,
# alpha, the number of calls and their total, per timing taken back its duration, alpha, the
# count and total its commit left, the number of calls and minus their total (storage.local's
# moved and retracted, with commit_in's weights of the steps taken back). Replies:
# {1, number or 0, the entries after [15] that came before the record, then the count and
# total of each timing observed} when written, {0, entries after the head} when the log moved
# on, {-1} when the guarded key changed, {-2} when the key to take was gone, {-3} when the key
# to create existed. The record is added before the head moves: a script that fails halfway
# keeps what it wrote, and a record number must never be given out without its record.
_COMMIT = (
    f"local UNDOABLE = {UNDOABLE!r}\n"
    + """
local k = 0
if ARGV[1] == '1' then
    if redis.call('GET', KEYS[3]) ~= ARGV[3] then
        return {-1}
    end
    if ARGV[2] ~= '' and tonumber(redis.call('GET', KEYS[2]) or '0') ~= tonumber(ARGV[2]) then
        return {0, redis.call('XRANGE', KEYS[1], (tonumber(ARGV[2]) + 1) .. '-0', '+')}
    end
    k = 3
end
local take, create
if ARGV[6] == '1' then
    k = k + 1
    take = KEYS[k]
    if redis.call('GET', take) ~= ARGV[7] then
        return {-2}
    end
end
if ARGV[8] == '1' then
    k = k + 1
    create = KEYS[k]
    if redis.call('EXISTS', create) == 1 then
        return {-3}
    end
end
local a = 16
local takes, creates = {}, {}
for i = 1, tonumber(ARGV[12]) do
    k = k + 1
    if redis.call('GET', KEYS[k]) ~= ARGV[a] then
        return {-2}
    end
    takes[i] = KEYS[k]
    a = a + 1
end
for i = 1, tonumber(ARGV[13]) do
    k = k + 1
    if redis.call('EXISTS', KEYS[k]) == 1 then
        return {-3}
    end
    creates[i] = {KEYS[k], a}
    a = a + 2
end
local seq, unseen = 0, {}
if ARGV[4] == '1' then
    local head = tonumber(redis.call('GET', KEYS[2]) or '0')
    if ARGV[15] ~= '' and head > tonumber(ARGV[15]) then
        unseen = redis.call('XRANGE', KEYS[1], (tonumber(ARGV[15]) + 1) .. '-0', '+')
    end
    seq = head + 1
    redis.call('XADD', KEYS[1], seq .. '-0', 'r', ARGV[5])
    redis.call('SET', KEYS[2], seq)
end
local function put(key, value, px)
    if tonumber(px) > 0 then
        redis.call('SET', key, value, 'PX', px)
    else
        redis.call('SET', key, value)
    end
end
local sets, observes = tonumber(ARGV[11]), tonumber(ARGV[14])
for i = k + 1, k + sets do
    put(KEYS[i], ARGV[a], ARGV[a + 1])
    a = a + 2
end
if create then
    put(create, ARGV[9], ARGV[10])
end
if take then
    redis.call('DEL', take)
end
for _, made in ipairs(creates) do
    put(made[1], ARGV[made[2]], ARGV[made[2] + 1])
end
for _, key in ipairs(takes) do
    redis.call('DEL', key)
end
local reply = {1, seq, unseen}
k = k + sets
for i = k + 1, k + observes do
    local calls = tonumber(ARGV[a + 2])
    local count = redis.call('HINCRBY', KEYS[i], 'count', calls)
    local total = redis.call('HINCRBY', KEYS[i], 'total', ARGV[a + 3])
    local mean = tonumber(ARGV[a])
    if count > calls then
        local alpha = tonumber(ARGV[a + 1])
        local before = tonumber(redis.call('HGET', KEYS[i], 'mean'))
        if calls == 1 then
            mean = alpha * mean + (1 - alpha) * before
        else
            local kept = (1 - alpha) ^ calls
            mean = kept * before + (1 - kept) * mean
        end
    end
    redis.call('HSET', KEYS[i], 'mean', string.format('%.17g', mean))
    reply[#reply + 1] = count
    reply[#reply + 1] = total
    a = a + 4
end
local weights = {}
for i = k + observes + 1, #KEYS do
    local count = tonumber(redis.call('HGET', KEYS[i], 'count'))
    local calls = tonumber(ARGV[a + 4])
    if count and count <= calls then
        redis.call('HSET', KEYS[i], 'count', 0, 'total', 0, 'mean', '0')
    elseif count then
        local total = tonumber(redis.call('HGET', KEYS[i], 'total'))
        local alpha, duration = tonumber(ARGV[a + 1]), tonumber(ARGV[a])
        local kept = (1 - alpha) ^ calls
        local weight = (weights[KEYS[i]] or 1) * kept
        if weight >= UNDOABLE and count == tonumber(ARGV[a + 2]) and total == tonumber(ARGV[a + 3]) then
            local mean = tonumber(redis.call('HGET', KEYS[i], 'mean'))
            if calls == 1 then
                mean = (mean - alpha * duration) / (1 - alpha)
            else
                mean = (mean - (1 - kept) * duration) / kept
            end
            redis.call('HSET', KEYS[i], 'mean', string.format('%.17g', mean))
        else
            weight = 0
        end
        weights[KEYS[i]] = weight
        redis.call('HINCRBY', KEYS[i], 'count', -calls)
        redis.call('HINCRBY', KEYS[i], 'total', ARGV[a + 5])
    end
    a = a + 6
end
return reply
"""
)
_CONFLICTS = {-2: TAKEN, -3: EXISTS}


class RedisScripts(RedisClient):
    """Commits made by the script, registered on the client (redis-py loads it again on a
    server that lost it)."""

    def __init__(self, client: redis.Redis | redis.RedisCluster, prefix: str = "river_ml:") -> None:
        super().__init__(client, prefix)
        self._commit = client.register_script(_COMMIT)

    def commit(self, change: Change, guard: Guard | None = None) -> Outcome:
        keys: list[str] = []
        args: list[Any] = ["0", "", "", "0", "", "0", "", "0", "", 0]
        args += [len(change.sets), len(change.takes), len(change.creates), len(change.observes), ""]
        if guard is not None:
            keys += [*self._logs(guard.log), self._k(guard.key)]
            args[0:3] = ["1", "" if guard.head is None else guard.head, guard.value]
            if guard.after is not None:
                args[14] = guard.after
        if change.record is not None:
            if guard is None:
                raise ValueError("A record is appended to the log of a guard; none was given.")
            args[3:5] = ["1", change.record]
        if change.take is not None:
            keys.append(self._k(change.take[0]))
            args[5:7] = ["1", change.take[1]]
        if change.create is not None:
            keys.append(self._k(change.create[0]))
            args[7:10] = ["1", change.create[1], self._px(change.create[2])]
        for key, value in change.takes:
            keys.append(self._k(key))
            args.append(value)
        for key, value, ttl in change.creates:
            keys.append(self._k(key))
            args += [value, self._px(ttl)]
        for key, value, ttl in change.sets:
            keys.append(self._k(key))
            args += [value, self._px(ttl)]
        for key, duration, alpha, calls in change.observes:
            keys.append(self._t(key))
            args += [duration, repr(alpha), calls, duration * calls]
        for (key, duration, alpha, calls), (count, total) in change.retracts:
            keys.append(self._t(key))
            args += [duration, repr(alpha), count, total, calls, -duration * calls]
        reply = self._commit(keys=keys, args=args)
        if reply[0] == 1:
            tallies = tuple((int(reply[i]), int(reply[i + 1])) for i in range(3, len(reply), 2))
            return Outcome(True, int(reply[1]) or None, _entries(reply[2]), tallies=tallies)
        if reply[0] == 0:
            return Outcome(False, unseen=_entries(reply[1]))
        return Outcome(False, conflict=_CONFLICTS.get(reply[0]))

    @classmethod
    def _px(cls, ttl: float | None) -> int:
        return cls._expiry(ttl).get("px", 0)


def _entries(entries: list) -> Records:
    """The records of a script's stream entries, each ``[id, [field, value]]``."""
    return [(int(entry_id.split(b"-")[0]), fields[1]) for entry_id, fields in entries]
