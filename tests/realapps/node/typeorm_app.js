// The TypeORM app (seeds 003/004: journey scheduler, CSV imports, executeNode, segments):
//   node typeorm_app.js setup|<workload>
// DATABASE_URL names the database; PGAPPNAME is the application_name of every connection. The set-up
// alone synchronizes the schema from the entities, then inserts the seed rows.
import "reflect-metadata";
import { DataSource, In, LessThanOrEqual } from "typeorm";
import { main, rng, stepOf } from "./crm.js";
import {
  Campaign, CampaignContact, Contact, Did, ENTITIES, Journey, JourneyContact, JourneyNode, JourneyNodeExecution,
  Tenant, User,
} from "./typeorm_entities.js";

const step = stepOf(process.argv, "to-");
const appName = process.env.PGAPPNAME || "typeorm-app";
const dataSource = new DataSource({
  type: "postgres",
  url: process.env.DATABASE_URL,
  entities: ENTITIES,
  synchronize: step === "setup",
  applicationName: appName,
  extra: { max: 10, application_name: appName },
  logging: process.env.TYPEORM_LOGGING ? ["query"] : false,
});

const TENANT = 1; // the tenant of the signed-in user / of the job
const NOW = new Date(Date.UTC(2026, 0, 15, 12)); // the scheduler's clock
const NODE_TYPES = ["trigger", "sms", "wait", "call", "branch", "sms", "wait", "email", "call", "end"];
const repo = (entity) => dataSource.getRepository(entity);
const phoneOf = (tenant, n) => `+1555${tenant}${String(n).padStart(6, "0")}`;

async function setup() {
  const rand = rng(3);
  const at = (minutes) => new Date(NOW.getTime() - minutes * 60000);
  const insert = async (entity, rows) => {
    for (let i = 0; i < rows.length; i += 500) await repo(entity).insert(rows.slice(i, i + 500));
  };
  await insert(Tenant, [1, 2, 3].map((id) => ({ id, name: `Tenant ${id}` })));
  const users = Array.from({ length: 30 }, (_, i) => ({ id: i + 1, tenantId: (i % 3) + 1, name: `Agent ${i + 1}`,
    email: `agent${i + 1}@example.test` }));
  await insert(User, users);
  const contacts = Array.from({ length: 600 }, (_, i) => {
    const t = (i % 3) + 1;
    const owners = users.filter((u) => u.tenantId === t);
    return { id: i + 1, tenantId: t, ownerId: owners[Math.floor(i / 3) % owners.length].id, firstName: `First${i + 1}`,
      lastName: `Last${i + 1}`, phoneNumber: phoneOf(t, i + 1), email: `c${i + 1}@example.test` };
  });
  await insert(Contact, contacts);
  const ofTenant = (t) => contacts.filter((c) => c.tenantId === t);
  await insert(Campaign, Array.from({ length: 6 }, (_, i) => ({ id: i + 1, tenantId: (i % 3) + 1,
    name: `Campaign ${i + 1}`, status: "ACTIVE" })));
  await insert(CampaignContact, [1, 2, 3].flatMap((c) => ofTenant(c).slice(0, 50).map((ct) => ({
    tenantId: c, campaignId: c, contactId: ct.id, status: "SENT" }))));
  const journeys = Array.from({ length: 6 }, (_, i) => ({ id: i + 1, tenantId: (i % 3) + 1, name: `Journey ${i + 1}`,
    status: "ACTIVE" }));
  await insert(Journey, journeys);
  const nodes = journeys.flatMap((j) => NODE_TYPES.map((type, k) => ({ id: (j.id - 1) * 10 + k + 1, tenantId: j.tenantId,
    journeyId: j.id, type, previousNodeId: k === 0 ? null : (j.id - 1) * 10 + k, position: k })));
  await insert(JourneyNode, nodes);
  const jcs = journeys.flatMap((j) => ofTenant(j.tenantId).slice(j.id <= 3 ? 0 : 40, j.id <= 3 ? 40 : 80)
    .map((c) => ({ tenantId: j.tenantId, journeyId: j.id, contactId: c.id, status: "ACTIVE", enrolledAt: at(20000) })));
  await insert(JourneyContact, jcs);
  const saved = await repo(JourneyContact).find({ order: { id: "ASC" } });
  const executions = [];
  for (const jc of saved) {
    const done = 1 + Math.floor(rand() * 6);
    const journeyNodes = nodes.filter((n) => n.journeyId === jc.journeyId);
    for (let k = 0; k < done; k++) {
      executions.push({ tenantId: jc.tenantId, journeyContactId: jc.id, nodeId: journeyNodes[k].id, status: "COMPLETED",
        scheduledAt: at(10000 - k * 600), executedAt: at(10000 - k * 600 - 1) });
    }
    executions.push({ tenantId: jc.tenantId, journeyContactId: jc.id, nodeId: journeyNodes[done].id, status: "PENDING",
      scheduledAt: at(1 + Math.floor(rand() * 600)), executedAt: null });
  }
  await insert(JourneyNodeExecution, executions);
  await insert(Did, [1, 2, 3].flatMap((t) => Array.from({ length: 30 }, (_, k) => ({ tenantId: t,
    number: `+1800${t}${String(k).padStart(6, "0")}`, label: `Line ${k}` }))));
  for (const table of ["tenants", "users", "contacts", "campaigns", "journeys", "journey_nodes"]) {
    await dataSource.query(`select setval(pg_get_serial_sequence('${table}', 'id'), (select max(id) from ${table}))`);
  }
  await dataSource.query("analyze");
}

/** Journey contacts of tenant 1's first journey that are due for their next node. */
const dueJourneyContacts = () => repo(JourneyContact).find({
  where: { tenantId: TENANT, journeyId: 1, status: "ACTIVE" }, order: { id: "ASC" }, take: 20,
});

const nextExecution = (jc, nodeId) => repo(JourneyNodeExecution).create({
  tenantId: TENANT, journeyContactId: jc.id, nodeId, status: "PENDING", scheduledAt: NOW,
});

/** Pending executions whose time has come (seed 003 §1: the scheduler's batch). */
const pendingExecutions = () => repo(JourneyNodeExecution).find({
  where: { tenantId: TENANT, status: "PENDING", scheduledAt: LessThanOrEqual(NOW) },
  order: { scheduledAt: "ASC", id: "ASC" },
  take: 20,
});

/** A CSV upload: 20 rows for tenant 1's second campaign, 8 of them contacts that exist already. */
function csvRows(batch) {
  const existing = Array.from({ length: 8 }, (_, k) => phoneOf(TENANT, 3 * (batch * 8 + k) + 1)); // tenant 1's contacts
  const fresh = Array.from({ length: 12 }, (_, k) => phoneOf(TENANT, 900000 + batch * 100 + k));
  return [...existing, ...fresh].map((phoneNumber, k) => ({ phoneNumber, firstName: `Csv${batch}`, lastName: `Row${k}` }));
}

const workloads = {
  setup,

  // seed 003 §1 "before": the next execution of each due contact, one save() (and so one
  // START TRANSACTION / INSERT / COMMIT) per contact
  "enqueue-save-loop": async () => {
    for (const jc of await dueJourneyContacts()) {
      await repo(JourneyNodeExecution).save(nextExecution(jc, 5));
    }
  },

  // seed 003 §1 "after": collected, then one save(array): one transaction, one multi-row INSERT
  "enqueue-save-array": async () => {
    const batch = (await dueJourneyContacts()).map((jc) => nextExecution(jc, 6));
    await repo(JourneyNodeExecution).save(batch);
  },

  // seed 003 §1: the scheduler marks each pending execution done and saves it in the loop
  "scheduler-save-loop": async () => {
    for (const execution of await pendingExecutions()) {
      // ... the node's action runs here ...
      execution.status = "COMPLETED";
      execution.executedAt = NOW;
      await repo(JourneyNodeExecution).save(execution);
    }
  },

  // seed 003's batched form for updates: save(array) of the changed entities
  "scheduler-save-array": async () => {
    const done = [];
    for (const execution of await pendingExecutions()) {
      execution.status = "COMPLETED";
      execution.executedAt = NOW;
      done.push(execution);
    }
    await repo(JourneyNodeExecution).save(done);
  },

  // one UPDATE for the whole batch
  "scheduler-update-in": async () => {
    const ids = (await pendingExecutions()).map((e) => e.id);
    await repo(JourneyNodeExecution).update({ id: In(ids), tenantId: TENANT }, { status: "COMPLETED", executedAt: NOW });
  },

  // seed 003 §2 "before": per CSV row, look the contact up by phone, create it if new, then enrol it
  "csv-import-loop": async () => {
    const campaignId = 4; // tenant 1's second campaign
    for (const row of csvRows(0)) {
      let contact = await repo(Contact).findOne({ where: { phoneNumber: row.phoneNumber, tenantId: TENANT } });
      if (!contact) {
        contact = await repo(Contact).save(repo(Contact).create({ ...row, tenantId: TENANT }));
      }
      await repo(CampaignContact).save(repo(CampaignContact).create({ tenantId: TENANT, campaignId, contactId: contact.id }));
    }
  },

  // seed 003 §2 "after": one lookup with In(), one save per table, all in one transaction
  "csv-import-bulk": async () => {
    const campaignId = 4;
    const rows = csvRows(1);
    await dataSource.transaction(async (manager) => {
      const existing = await manager.find(Contact, {
        where: { phoneNumber: In(rows.map((r) => r.phoneNumber)), tenantId: TENANT },
      });
      const byPhone = new Map(existing.map((c) => [c.phoneNumber, c]));
      const toCreate = rows.filter((r) => !byPhone.has(r.phoneNumber))
        .map((r) => manager.create(Contact, { ...r, tenantId: TENANT }));
      for (const c of await manager.save(Contact, toCreate)) byPhone.set(c.phoneNumber, c);
      await manager.save(CampaignContact, rows.map((r) => manager.create(CampaignContact, {
        tenantId: TENANT, campaignId, contactId: byPhone.get(r.phoneNumber).id })));
    });
  },

  // seed 003 §3: DID import, the duplicates checked in bulk, then each number saved on its own
  // without a transaction (save(entity, { transaction: false }))
  "did-import-no-tx": async () => {
    const numbers = Array.from({ length: 15 }, (_, k) => `+1800${TENANT}${String(k + 25).padStart(6, "0")}`);
    const taken = new Set((await repo(Did).find({ where: { tenantId: TENANT, number: In(numbers) } })).map((d) => d.number));
    for (const number of numbers.filter((n) => !taken.has(n))) {
      await repo(Did).save(repo(Did).create({ tenantId: TENANT, number, label: "Imported" }), { transaction: false });
    }
  },

  // seed 004 §1.1: executeNode for each node of the journey: this node's execution and the previous
  // node's, two findOne per node
  "execute-node-loop": async () => {
    const [jc] = await dueJourneyContacts();
    const nodes = await repo(JourneyNode).find({ where: { journeyId: jc.journeyId, tenantId: TENANT }, order: { position: "ASC" } });
    const plan = [];
    for (const node of nodes) {
      const execution = await repo(JourneyNodeExecution).findOne({
        where: { nodeId: node.id, journeyContactId: jc.id, tenantId: TENANT },
      });
      const previousExecution = node.previousNodeId === null ? null : await repo(JourneyNodeExecution).findOne({
        where: { nodeId: node.previousNodeId, journeyContactId: jc.id, tenantId: TENANT, status: "COMPLETED" },
        order: { executedAt: "DESC" },
      });
      plan.push({ node: node.id, due: !execution && (node.previousNodeId === null || Boolean(previousExecution)) });
    }
    return plan;
  },

  // seed 004 §1.1's fix: the contact's executions in one query, matched in memory
  "execute-node-batched": async () => {
    const [jc] = await dueJourneyContacts();
    const nodes = await repo(JourneyNode).find({ where: { journeyId: jc.journeyId, tenantId: TENANT }, order: { position: "ASC" } });
    const executions = await repo(JourneyNodeExecution).find({
      where: { journeyContactId: jc.id, tenantId: TENANT }, order: { executedAt: "DESC" },
    });
    const byNode = new Map();
    for (const e of executions) if (!byNode.has(e.nodeId)) byNode.set(e.nodeId, e);
    return nodes.map((node) => ({
      node: node.id,
      due: !byNode.has(node.id) && (node.previousNodeId === null || byNode.get(node.previousNodeId)?.status === "COMPLETED"),
    }));
  },

  // the tenant's contacts with their owner: one query, a LEFT JOIN along the foreign key
  "contacts-with-owner": async () => {
    return repo(Contact).find({ relations: { owner: true }, where: { tenantId: TENANT }, order: { id: "ASC" } });
  },

  // the same, one page of it: TypeORM pages a joined find in two queries (the page's distinct ids,
  // then the rows of those ids with the join)
  "contacts-with-owner-page": async () => {
    return repo(Contact).find({ relations: { owner: true }, where: { tenantId: TENANT }, order: { id: "ASC" }, take: 25 });
  },

  // PATCH /journeys/:id/pause: the journey is loaded by the id in the URL alone, then saved
  "journey-pause-by-id": async () => {
    const request = { user: { tenantId: TENANT }, params: { id: 2 } }; // journey 2 belongs to tenant 2
    const journey = await repo(Journey).findOne({ where: { id: request.params.id } });
    if (!journey) throw new Error("not found");
    journey.status = "PAUSED";
    await repo(Journey).save(journey);
  },

  // the same handler loading the journey with the caller's tenant
  "journey-pause-scoped": async () => {
    const request = { user: { tenantId: TENANT }, params: { id: 4 } }; // journey 4: tenant 1
    const journey = await repo(Journey).findOne({ where: { id: request.params.id, tenantId: request.user.tenantId } });
    if (!journey) throw new Error("not found");
    journey.status = "PAUSED";
    await repo(Journey).save(journey);
  },

  // seed 004 §1.5: the segment "contacts in no journey yet", written with NOT IN (subquery)
  "segment-not-in": async () => {
    return repo(Contact).createQueryBuilder("contact")
      .where("contact.tenantId = :tenantId", { tenantId: TENANT })
      .andWhere(`contact.id NOT IN (
        SELECT DISTINCT "contactId" FROM journey_contacts WHERE "tenantId" = contact."tenantId"
      )`)
      .orderBy("contact.id")
      .limit(100)
      .getMany();
  },

  // seed 004 §1.5's fix: NOT EXISTS
  "segment-not-exists": async () => {
    return repo(Contact).createQueryBuilder("contact")
      .where("contact.tenantId = :tenantId", { tenantId: TENANT })
      .andWhere(`NOT EXISTS (
        SELECT 1 FROM journey_contacts jc
        WHERE jc."contactId" = contact.id AND jc."tenantId" = contact."tenantId"
      )`)
      .orderBy("contact.id")
      .limit(100)
      .getMany();
  },
};

await dataSource.initialize();
await main(step, workloads, () => dataSource.destroy());
