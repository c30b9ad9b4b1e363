-- Order events in two steps (docs/EVENTS.md): writers append to order_event_inbox in their own
-- transaction, taking no lock that anyone else waits for; the sequencer moves committed inbox
-- rows into order_events, giving each the next revision, one sequencer transaction at a time.
-- Revisions then commit in revision order on every node, so readers need no lock at all.
-- Idempotent, like every migration: it can be re-run after a crash at any statement.
--
-- order_event_inbox: events as their transactions wrote them, `id` in insertion order (an
-- AUTO_INCREMENT: not commit order, which is why they wait here for the sequencer).

CREATE TABLE IF NOT EXISTS order_event_inbox (
    id          BIGINT       NOT NULL AUTO_INCREMENT,
    event_id    CHAR(36)     NOT NULL,
    type        TINYINT      NOT NULL,
    order_id    BIGINT       NOT NULL,
    payload     LONGTEXT     NOT NULL,
    create_time DATETIME(6)  NOT NULL,
    PRIMARY KEY (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

-- sequenced: the highest revision the sequencer gave, every one below it too. The events
-- written before this migration keep their revisions.
INSERT IGNORE INTO order_event_marks (name, revision)
    SELECT 'sequenced', COALESCE(MAX(revision), 0) FROM order_events;

-- gate: the share-mode lock writers took before this migration; nothing takes it any more.
DELETE FROM order_event_marks WHERE name = 'gate';
