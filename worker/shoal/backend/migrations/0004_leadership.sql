-- Shoal schema, version 4: roles held by lease, and fair handoffs.

-- A role one worker plays for the others (today: `maintenance`, the leader that
-- reaps expired leases and prunes) is a lease with a term: its holder renews
-- `expires_at` while it lives, any worker may take the role once it lapses, and
-- every action of the role names the term it was taken under, so a holder that
-- was frozen or cut off does nothing when it comes back (see Queries.elect).
CREATE TABLE {schema}.leaders (
    role       text PRIMARY KEY,
    holder     text NOT NULL,
    term       bigint NOT NULL,
    elected_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
INSERT INTO {schema}.leaders (role, holder, term, expires_at)
VALUES ('maintenance', '', 0, 'epoch');

-- When a worker parked: a single enqueue is handed to the worker parked longest,
-- so handoffs spread over the idle workers instead of going to the first found.
ALTER TABLE {schema}.workers ADD COLUMN parked_at timestamptz;
