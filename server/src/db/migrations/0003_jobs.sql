-- Durable side effects (docs/decisions/0009-outbox-and-jobs.md).

-- Every resource write (AuditEvents aside) adds a row here in the same statement: the transactional
-- outbox. The dispatcher turns rows into jobs (subscription deliveries, bot runs) and deletes them
-- in one transaction, so a crash anywhere delays a side effect and never drops it.
CREATE TABLE outbox (
  id                  bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  project_id          uuid        NOT NULL,
  resource_type       text        NOT NULL,
  resource_id         text        NOT NULL,
  version_id          uuid        NOT NULL,
  previous_version_id uuid,
  interaction         text        NOT NULL CHECK (interaction IN ('create', 'update', 'delete')),
  created             timestamptz NOT NULL DEFAULT now()
);

-- No NOTIFY here: a NOTIFY takes a database-wide lock at commit, and every write commits an outbox
-- row. The node that writes wakes its own dispatcher; the others poll the outbox.

-- Work to do, claimed with FOR UPDATE SKIP LOCKED by any node. A running job whose lease ran out
-- (its node died) is claimed again. Jobs that use up their attempts stay as 'dead' until an admin
-- replays them; finished jobs are deleted (their AuditEvents remain).
CREATE TABLE job (
  id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  project_id   uuid        NOT NULL,
  kind         text        NOT NULL,
  payload      jsonb       NOT NULL,
  status       text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'running', 'dead')),
  attempts     int         NOT NULL DEFAULT 0,
  max_attempts int         NOT NULL,
  run_at       timestamptz NOT NULL DEFAULT now(),
  locked_until timestamptz,
  -- who holds the lease: a worker whose lease ran out may no longer finish or fail the job
  lease        uuid,
  last_error   text,
  -- one job per key (a cron bot's run at a given minute, whichever node schedules it)
  dedupe_key   text        UNIQUE,
  created      timestamptz NOT NULL DEFAULT now(),
  updated      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX job_ready ON job (run_at) WHERE status = 'pending';

-- Cron runs already scheduled (by any node), kept a day so that a finished run is not scheduled again.
CREATE TABLE cron_run (
  bot_id  text        NOT NULL,
  due     timestamptz NOT NULL,
  PRIMARY KEY (bot_id, due)
);
CREATE INDEX job_lease ON job (locked_until) WHERE status = 'running';
CREATE INDEX job_dead ON job (project_id, updated DESC) WHERE status = 'dead';

CREATE FUNCTION job_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('ermis_jobs', '');
  RETURN NULL;
END $$;
CREATE TRIGGER job_notify AFTER INSERT OR UPDATE OF status, run_at ON job FOR EACH STATEMENT EXECUTE FUNCTION job_notify();

-- Websocket subscription notifications, kept a few minutes so that a client that reconnects gets
-- what it missed (MedplumClient re-creates its Subscription on reconnect: the events of the one its
-- login lost are replayed to the new one with the same criteria).
CREATE TABLE subscription_event (
  event_number    bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  project_id      uuid        NOT NULL,
  subscription_id text        NOT NULL,
  interaction     text        NOT NULL,
  focus           text        NOT NULL,
  resource        jsonb,
  created         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX subscription_event_subscription ON subscription_event (project_id, subscription_id, event_number);
CREATE INDEX subscription_event_created ON subscription_event (created);

CREATE FUNCTION subscription_event_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('ermis_ws', '');
  RETURN NULL;
END $$;
CREATE TRIGGER subscription_event_notify AFTER INSERT ON subscription_event FOR EACH STATEMENT EXECUTE FUNCTION subscription_event_notify();

-- Which login a websocket subscription was bound for, and what it was last sent before it closed.
CREATE TABLE ws_binding (
  subscription_id text        NOT NULL,
  project_id      uuid        NOT NULL,
  login_id        uuid        NOT NULL,
  criteria        text        NOT NULL,
  last_event      bigint      NOT NULL DEFAULT 0,
  closed_at       timestamptz,
  taken_over      boolean     NOT NULL DEFAULT false,
  PRIMARY KEY (project_id, subscription_id)
);
CREATE INDEX ws_binding_login ON ws_binding (login_id, criteria) WHERE closed_at IS NOT NULL AND NOT taken_over;
