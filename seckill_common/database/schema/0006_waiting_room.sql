-- Waiting rooms (issue 25, docs/WAITING_ROOM.md). Runs on MariaDB 10.11 and MySQL 8.
--
-- Re-runnable after a crash at any statement: the ALTER TABLE is atomic and the runner takes
-- "duplicate column" from it as "already committed"; the rest is IF NOT EXISTS / INSERT IGNORE.
--
-- activities: the waiting room's settings (off by default: existing activities keep selling
-- as before). admission_rate NULL: adaptive.
ALTER TABLE activities
    ADD COLUMN waiting_room TINYINT NOT NULL DEFAULT 0,
    ADD COLUMN pre_queue_ms BIGINT NOT NULL DEFAULT 1800000,
    ADD COLUMN pass_validity_ms BIGINT NOT NULL DEFAULT 120000,
    ADD COLUMN admission_rate INT NULL;

-- queue_entries: one row per (activity, user), the buyer's place in the line.
--   seq          arrival order (AUTO_INCREMENT at join)
--   pre_queued   1 when the buyer joined before start_time by the database's clock
--   shuffle_key  drawn uniformly at random (a CSPRNG) at join, never shown: at start_time the
--                pre-queued buyers get their tickets in its order, a uniformly random order
--                independent of arrival
--   ticket       the place in the line (1, 2, ...), handed out by the mover: the pre-queued
--                buyers' shuffled rank at the start, then later arrivals in seq order. NULL
--                until then. Kept, with shuffle_time on the line, for audit.
--   state        1 waiting, 2 admitted (holds a pass until pass_expire_time), 3 used (bought
--                with it), 4 expired (did not)
CREATE TABLE IF NOT EXISTS queue_entries (
    seq              BIGINT      NOT NULL AUTO_INCREMENT,
    activity_id      BIGINT      NOT NULL,
    user_id          VARBINARY(256) NOT NULL,
    quantity         INT         NOT NULL,
    join_time        DATETIME(6) NOT NULL,
    pre_queued       TINYINT     NOT NULL,
    shuffle_key      BIGINT      NOT NULL,
    ticket           BIGINT      NULL,
    state            TINYINT     NOT NULL DEFAULT 1,
    admit_time       DATETIME(6) NULL,
    pass_expire_time DATETIME(6) NULL,
    PRIMARY KEY (seq),
    UNIQUE KEY queue_entries_user (activity_id, user_id),
    KEY queue_entries_line (activity_id, ticket),
    KEY queue_entries_state (state, activity_id),
    CONSTRAINT queue_entries_state_known CHECK (state BETWEEN 1 AND 4),
    CONSTRAINT queue_entries_activity_fk FOREIGN KEY (activity_id) REFERENCES activities (id)
        ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

-- queue_lines: one row per activity whose line has moved; written only by the mover.
--   last_ticket       tickets handed out so far (1..last_ticket)
--   admitted_through  every ticket up to here has had its turn: a waiting buyer's position is
--                     ticket - admitted_through
--   ticket_round      grows each time tickets are handed out (feeds then learn their buyers')
--   shuffle_time      when the pre-queue was shuffled, by the database's clock
--   admit_expire_time the pass expiry of the latest admissions
--   admission_rate    measured admissions per second (for the estimated wait)
--   waiting           buyers waiting (pre-queued or in line), as the last move counted them
CREATE TABLE IF NOT EXISTS queue_lines (
    activity_id       BIGINT      NOT NULL,
    last_ticket       BIGINT      NOT NULL DEFAULT 0,
    admitted_through  BIGINT      NOT NULL DEFAULT 0,
    ticket_round      BIGINT      NOT NULL DEFAULT 0,
    shuffle_time      DATETIME(6) NULL,
    admit_expire_time DATETIME(6) NULL,
    admission_rate    DOUBLE      NOT NULL DEFAULT 0,
    waiting           BIGINT      NOT NULL DEFAULT 0,
    move_time         DATETIME(6) NULL,
    PRIMARY KEY (activity_id),
    CONSTRAINT queue_lines_activity_fk FOREIGN KEY (activity_id) REFERENCES activities (id)
        ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
