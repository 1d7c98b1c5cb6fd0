// An Express API over a pg.Pool of 8 and a local load against it, in one process:
//   node express_app.js setup|<workload>
// The server listens on an OS-chosen port of 127.0.0.1; 100 requests go to it with fetch(), 8 at a time
// (one-connection-one-team: a pool of one, one at a time);
// then the server and the pool are closed. DATABASE_URL names the database; PGAPPNAME is the
// application_name of every pooled connection.
import express from "express";
import pg from "pg";
import { main, setUpCrm, stepOf, tokenOf } from "./crm.js";

const REQUESTS = 100;
const CONCURRENCY = 8;
const STEP = stepOf(process.argv, "ex-");
// a single-process server with one connection (a small staging box, or a pool of one)
const ONE_CONNECTION = STEP === "one-connection-one-team";

const pool = new pg.Pool({
  connectionString: process.env.DATABASE_URL,
  max: ONE_CONNECTION ? 1 : 8,
  application_name: process.env.PGAPPNAME || "express-app",
});

/** The signed-in user, from the session token of the Authorization header. */
async function authenticate(db, req) {
  const token = (req.get("authorization") || "").replace(/^Bearer /, "");
  const { rows } = await db.query("select id, team_id, name from users where session_token = $1", [token]);
  return rows[0] ?? null;
}

/** The dashboard: the team's latest contacts (one page), and an audit row for the visit. */
async function dashboard(db, user) {
  const { rows } = await db.query(
    "select id, name, email, created_at from contacts where team_id = $1 order by created_at desc, id desc limit 20",
    [user.team_id]);
  await db.query("insert into audit_log (team_id, user_id, action) values ($1, $2, $3)",
    [user.team_id, user.id, "dashboard.view"]);
  return { user: user.name, contacts: rows };
}

function application({ transactional }) {
  const app = express();

  // every statement on whatever pooled connection pool.query picks, autocommitted; or, transactional,
  // the whole request on one checked-out client between BEGIN and COMMIT
  app.get("/api/dashboard", async (req, res) => {
    if (!transactional) {
      const user = await authenticate(pool, req);
      if (!user) return res.status(401).end();
      return res.json(await dashboard(pool, user));
    }
    const client = await pool.connect();
    try {
      await client.query("BEGIN");
      const user = await authenticate(client, req);
      if (!user) {
        await client.query("ROLLBACK");
        return res.status(401).end();
      }
      const body = await dashboard(client, user);
      await client.query("COMMIT");
      return res.json(body);
    } catch (err) {
      await client.query("ROLLBACK");
      throw err;
    } finally {
      client.release();
    }
  });

  // the contacts list with each contact's owner, written as one lookup per contact
  app.get("/api/contacts", async (req, res) => {
    const user = await authenticate(pool, req);
    if (!user) return res.status(401).end();
    const { rows: contacts } = await pool.query(
      "select id, name, email, owner_id from contacts where team_id = $1 order by id limit 10", [user.team_id]);
    for (const c of contacts) {
      const { rows } = await pool.query("select id, name, email from users where id = $1", [c.owner_id]);
      c.owner = rows[0] ?? null;
    }
    return res.json(contacts);
  });
  return app;
}

/** Serves ``app`` on 127.0.0.1:0, sends ``paths(i)`` for i < REQUESTS, ``concurrency`` at a time, as
 * ``user(i)`` (by default user (i mod 40) + 1: every team), and stops the server. */
async function load(app, paths, { concurrency = CONCURRENCY, user = (i) => (i % 40) + 1 } = {}) {
  const server = await new Promise((resolve) => {
    const s = app.listen(0, "127.0.0.1", () => resolve(s));
  });
  const base = `http://127.0.0.1:${server.address().port}`;
  let next = 0;
  const worker = async () => {
    while (next < REQUESTS) {
      const i = next++;
      const res = await fetch(base + paths(i), { headers: { authorization: `Bearer ${tokenOf(user(i))}` } });
      if (res.status !== 200) throw new Error(`${paths(i)}: HTTP ${res.status}`);
      await res.json();
    }
  };
  try {
    await Promise.all(Array.from({ length: concurrency }, worker));
  } finally {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  }
}

const workloads = {
  setup: () => setUpCrm((text, params) => pool.query(text, params)),
  "pooled-requests": () => load(application({ transactional: false }), () => "/api/dashboard"),
  "pooled-transactions": () => load(application({ transactional: true }), () => "/api/dashboard"),
  // one client after another, the four users of team 1 (ids 1, 4, 7, 10), all on the pool's one connection
  "one-connection-one-team": () => load(application({ transactional: false }), () => "/api/dashboard",
    { concurrency: 1, user: (i) => 1 + 3 * (i % 4) }),
  // one request in five goes to the contacts list
  "n-plus-one-endpoint": () => load(application({ transactional: false }),
    (i) => (i % 5 === 4 ? "/api/contacts" : "/api/dashboard")),
};

await main(STEP, workloads, () => pool.end());
