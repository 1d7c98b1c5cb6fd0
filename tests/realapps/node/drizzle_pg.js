// The Drizzle app over node-postgres (a pg.Pool of 10):  node drizzle_pg.js setup|<workload>
// DATABASE_URL names the database; PGAPPNAME is the application_name of every connection.
import { drizzle } from "drizzle-orm/node-postgres";
import pg from "pg";
import { main, setUpCrm, stepOf } from "./crm.js";
import * as schema from "./drizzle_schema.js";
import { drizzleWorkloads } from "./drizzle_workloads.js";

const pool = new pg.Pool({
  connectionString: process.env.DATABASE_URL,
  max: 10,
  application_name: process.env.PGAPPNAME || "drizzle-pg",
});
const db = drizzle({ client: pool, schema });

const workloads = {
  setup: () => setUpCrm((text, params) => pool.query(text, params)),
  ...drizzleWorkloads({
    db,
    cards: (ids, teamId) =>
      Promise.all(ids.map((id) => pool.query("select id, name, email from contacts where id = $1 and team_id = $2", [id, teamId])))
        .then((results) => results.flatMap((r) => r.rows)),
    cardsBatched: (ids, teamId) =>
      pool.query("select id, name, email from contacts where id = any($1) and team_id = $2", [ids, teamId])
        .then((r) => r.rows),
  }),
};

await main(stepOf(process.argv, "dzg-"), workloads, () => pool.end());
