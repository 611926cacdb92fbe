-- FHIR resources: the current version of every resource, one row each, content as the exact JSON text.
-- Storage design: docs/decisions/0003-storage-design.md.
CREATE TABLE resource (
  rid           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  resource_type text        NOT NULL,
  id            text        NOT NULL,
  project_id    uuid        NOT NULL,
  version_id    uuid        NOT NULL,
  last_updated  timestamptz NOT NULL,
  deleted       boolean     NOT NULL DEFAULT false,
  content       text        NOT NULL,
  -- ids are unique within a project: one project can neither take nor probe another's ids
  CONSTRAINT resource_project_type_id_key UNIQUE (project_id, resource_type, id)
);
CREATE INDEX resource_project_type_updated ON resource (project_id, resource_type, last_updated, rid)
  WHERE NOT deleted;

-- Every version ever written, including deletes (operation 'D', empty content).
CREATE TABLE resource_history (
  version_id    uuid        PRIMARY KEY,
  rid           bigint      NOT NULL,
  resource_type text        NOT NULL,
  id            text        NOT NULL,
  project_id    uuid        NOT NULL,
  last_updated  timestamptz NOT NULL,
  operation     char(1)     NOT NULL CHECK (operation IN ('C', 'U', 'D')),
  content       text        NOT NULL
);
CREATE INDEX resource_history_rid ON resource_history (rid, last_updated DESC);
CREATE INDEX resource_history_id ON resource_history (resource_type, id);
CREATE INDEX resource_history_type ON resource_history (project_id, resource_type, last_updated DESC);
CREATE INDEX resource_history_system ON resource_history (project_id, last_updated DESC);

-- Raw bytes of Binary resources, one row per Binary version.
CREATE TABLE binary_content (
  version_id uuid  PRIMARY KEY,
  rid        bigint NOT NULL,
  data       bytea  NOT NULL
);

-- Dictionary of search parameters: (resource type, code) -> small integer used by the index tables.
CREATE TABLE search_param (
  id            integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  resource_type text NOT NULL,
  code          text NOT NULL,
  UNIQUE (resource_type, code)
);

-- Search index tables: one row per value a search parameter extracts from the current version.
-- grp is 0 for plain parameters; for a composite parameter, the rows of its components that come
-- from the same repetition (e.g. one Observation.component) share a grp >= 1.
-- token and uri values
CREATE TABLE sp_token (
  rid    bigint  NOT NULL,
  param  integer NOT NULL,
  grp    smallint NOT NULL DEFAULT 0,
  system text,
  code   text,
  text   text
);
CREATE INDEX sp_token_rid ON sp_token (rid, param);
CREATE INDEX sp_token_code ON sp_token (param, code, system, rid);

-- string values: norm is lower-cased with accents removed (the default and :contains match), exact as stored.
CREATE TABLE sp_string (
  rid   bigint  NOT NULL,
  param integer NOT NULL,
  grp    smallint NOT NULL DEFAULT 0,
  norm  text    NOT NULL,
  exact text    NOT NULL
);
CREATE INDEX sp_string_rid ON sp_string (rid, param);
CREATE INDEX sp_string_norm ON sp_string (param, norm text_pattern_ops, rid);

-- date, dateTime, instant, Period and Timing values as the closed range [low, high] they cover.
CREATE TABLE sp_date (
  rid   bigint      NOT NULL,
  param integer     NOT NULL,
  grp   smallint    NOT NULL DEFAULT 0,
  low   timestamptz NOT NULL,
  high  timestamptz NOT NULL
);
CREATE INDEX sp_date_rid ON sp_date (rid, param);
CREATE INDEX sp_date_low ON sp_date (param, low, high, rid);
CREATE INDEX sp_date_high ON sp_date (param, high, low, rid);

-- number and quantity values; low/high is the range implied by the value's precision (or a Range).
CREATE TABLE sp_quantity (
  rid    bigint  NOT NULL,
  param  integer NOT NULL,
  grp    smallint NOT NULL DEFAULT 0,
  value  numeric,
  low    numeric,
  high   numeric,
  system text,
  code   text
);
CREATE INDEX sp_quantity_rid ON sp_quantity (rid, param);
CREATE INDEX sp_quantity_value ON sp_quantity (param, value, rid);

-- reference values: target_type/target_id for literal references, ref for the reference text or canonical URL.
CREATE TABLE sp_reference (
  rid         bigint  NOT NULL,
  param       integer NOT NULL,
  grp         smallint NOT NULL DEFAULT 0,
  target_type text,
  target_id   text,
  ref         text    NOT NULL
);
CREATE INDEX sp_reference_rid ON sp_reference (rid, param);
CREATE INDEX sp_reference_target ON sp_reference (param, target_id, target_type, rid);
CREATE INDEX sp_reference_ref ON sp_reference (param, ref, rid);

-- Server-wide settings and secrets generated on first start (e.g. the key that signs Binary storage URLs).
CREATE TABLE server_setting (
  key   text PRIMARY KEY,
  value text NOT NULL
);
