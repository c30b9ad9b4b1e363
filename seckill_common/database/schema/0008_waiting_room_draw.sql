-- Waiting rooms: the draw in chunks (docs/WAITING_ROOM.md). Runs on MariaDB 10.11 and MySQL 8;
-- safe to run again (a "duplicate key name" from the ALTER TABLE means it committed before).
--
-- The mover hands the pre-queued buyers their tickets a bounded chunk per move, in
-- (shuffle_key, seq) order (activity_svc/queue_repository.py). This index gives the next chunk
-- of one line's unticketed pre-queued buyers in that order by reading the chunk's own entries
-- only (InnoDB appends the primary key, seq, to every secondary index): no sort of the whole
-- pre-queue at every move.
ALTER TABLE queue_entries
    ADD KEY queue_entries_draw (activity_id, ticket, pre_queued, shuffle_key);
