// The Drizzle app over postgres.js (a pool of 10 connections):  node drizzle_postgresjs.js setup|<workload>
// DATABASE_URL names the database; PGAPPNAME is the application_name of every connection.
import { drizzle } from "drizzle-orm/postgres-js";
import postgres from "postgres";
import { main, setUpCrm, stepOf } from "./crm.js";
import * as schema from "./drizzle_schema.js";
import { drizzleWorkloads } from "./drizzle_workloads.js";

const sql = postgres(process.env.DATABASE_URL, {
  max: 10,
  onnotice: () => {},
  connection: { application_name: process.env.PGAPPNAME || "drizzle-postgresjs" },
});
const db = drizzle({ client: sql, schema });

const workloads = {
  setup: () => setUpCrm((text, params) => (params.length ? sql.unsafe(text, params) : sql.unsafe(text))),
  ...drizzleWorkloads({
    db,
    cards: (ids, teamId) =>
      Promise.all(ids.map((id) => sql`select id, name, email from contacts where id = ${id} and team_id = ${teamId}`))
        .then((results) => results.flat()),
    cardsBatched: (ids, teamId) =>
      sql`select id, name, email from contacts where id = any(${ids}::int[]) and team_id = ${teamId}`,
  }),
};

await main(stepOf(process.argv, "dzp-"), workloads, () => sql.end({ timeout: 5 }));
