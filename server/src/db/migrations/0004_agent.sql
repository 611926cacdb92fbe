-- The agent gateway (/ws/agent): which node holds which agent's websocket, and messages the server
-- sends to an agent (Agent/$push) when another node holds it.

-- One row per agent that has connected: its state, the node that holds the socket, its last
-- heartbeat and the counters it reported. Agent/$status reads it on any node.
CREATE TABLE agent_connection (
  project_id     uuid        NOT NULL,
  agent_id       text        NOT NULL,
  node_id        text        NOT NULL,
  status         text        NOT NULL CHECK (status IN ('connected', 'disconnected')),
  version        text,
  remote_address text,
  connected_at   timestamptz NOT NULL DEFAULT now(),
  last_heartbeat timestamptz NOT NULL DEFAULT now(),
  stats          jsonb,
  PRIMARY KEY (project_id, agent_id)
);

-- A message for an agent whose socket is on another node, and that node's answer. The sender
-- inserts and NOTIFYs ermis_agent; the holder sends it and writes the response; rows are deleted
-- by the sender once answered or timed out (and swept after an hour).
CREATE TABLE agent_relay (
  id          uuid        PRIMARY KEY,
  project_id  uuid        NOT NULL,
  agent_id    text        NOT NULL,
  message     jsonb       NOT NULL,
  response    jsonb,
  created     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX agent_relay_created ON agent_relay (created);
